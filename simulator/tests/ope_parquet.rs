//! Parquet in and out: logs and per-event files written by pandas/pyarrow
//! (`fixtures/parquet/make_parquet_fixtures.py`) evaluate as their CSVs do,
//! and `nudge-sim export` writes a partitioned dataset that evaluates as
//! the log it came from, incrementally.

use clap::Parser;
use nudge_sim::ope::{self, Args, Outcome};

fn fixture(path: &str) -> String {
    format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[derive(Parser)]
struct ExportCli {
    #[command(flatten)]
    args: nudge_sim::export::Args,
}

fn evaluate(args: &[&str]) -> Outcome {
    let mut argv = vec!["evaluate"];
    argv.extend_from_slice(args);
    ope::run(&Cli::try_parse_from(argv).unwrap().args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn values(out: &Outcome) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = out.candidates[0]
        .1
        .estimates
        .iter()
        .map(|e| (e.name.to_string(), e.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_close(a: &[(String, f64)], b: &[(String, f64)], tol: f64) {
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert!((va - vb).abs() <= tol, "{ka}: {va} vs {vb}");
    }
}

#[test]
fn parquet_written_by_pyarrow_evaluates_as_the_csv_does() {
    let csv = evaluate(&[
        "--log",
        &fixture("obp/synthetic.obd.csv"),
        "--target-probs",
        &fixture("obp/synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("obp/synthetic_reward_model.csv"),
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
    ]);
    let pq = evaluate(&[
        "--log",
        &fixture("parquet/synthetic.obd.parquet"),
        "--target-probs",
        &fixture("parquet/synthetic_target_soft.parquet"),
        "--reward-model",
        &fixture("parquet/synthetic_reward_model_wide.parquet"),
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(pq.candidates[0].1.n, 400);
    // pandas' CSV float parser may differ from Rust's in the last bit.
    assert_close(&values(&csv), &values(&pq), 1e-12);

    let csv = evaluate(&[
        "--log",
        &format!("obd:{}", fixture("obp/obd_men_head.csv")),
        "--target-probs",
        &fixture("obp/obd_target_soft.csv"),
        "--estimators",
        "ipw,snipw",
        "--bootstrap",
        "0",
    ]);
    let pq = evaluate(&[
        "--log",
        &fixture("parquet/obd_men_head.parquet"),
        "--target-probs",
        &fixture("parquet/obd_target_soft_wide.parquet"),
        "--estimators",
        "ipw,snipw",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(pq.candidates[0].1.n, 296);
    assert_close(&values(&csv), &values(&pq), 1e-12);
}

#[test]
fn an_export_evaluates_as_its_log_and_is_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("export");
    let log = fixture("obp/synthetic.jsonl");
    let export = |extra: &[&str]| {
        let mut argv = vec![
            "export",
            "--to",
            to.to_str().unwrap(),
            "--database",
            &log,
            "--reward-window",
            "1h",
            "--as-of",
            "2026-12-01T00:00:00Z",
        ];
        argv.extend_from_slice(extra);
        nudge_sim::export::run(&ExportCli::try_parse_from(argv).unwrap().args).unwrap()
    };
    let first = export(&[]);
    assert_eq!(first.rows_read, 400);
    assert_eq!(first.written.len(), 1);
    assert!(first.written[0].is_final);
    assert!(
        to.join("policy=logger/date=2026-11-26/part-0.parquet")
            .exists()
    );
    assert!(to.join("_nudge_export.json").exists());
    let again = export(&[]);
    assert!(again.written.is_empty(), "{again:?}");
    assert_eq!(again.skipped_final, 1);

    let args = |log: &str| {
        evaluate(&[
            "--log",
            log,
            "--target-probs",
            &fixture("obp/synthetic_target_soft.csv"),
            "--reward-model",
            &fixture("obp/synthetic_reward_model.csv"),
            "--estimators",
            "ipw,snipw,dm,dr",
            "--bootstrap",
            "0",
        ])
    };
    // Every row keeps its policy and model versions and the rule the
    // export states: the JSONL's versions, the 1 h window.
    let opened = nudge_sim::ope::source::Source::parse(to.to_str().unwrap())
        .open(&Default::default(), false)
        .unwrap();
    for rec in opened {
        let rec = rec.unwrap();
        assert_eq!(rec.versions, Some((1, 0)), "{}", rec.origin);
        let rule = rec.rule.expect("the export states the rule");
        assert_eq!(rule.window, chrono::Duration::hours(1));
        assert_eq!(rule.default, 0.0);
    }

    let from_log = args(&log);
    let from_export = args(to.to_str().unwrap());
    assert_eq!(from_export.candidates[0].1.n, 400);
    assert_close(&values(&from_log), &values(&from_export), 0.0);
}

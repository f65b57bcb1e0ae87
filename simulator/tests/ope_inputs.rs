//! What analysts bring to `nudge-sim evaluate`: compressed files, CSV logs
//! without the `obd:` prefix, wide target-probability and reward-model
//! files (OBP's `round,p0,…` layout and one column per action id), several
//! Switch-DR / DRos parameters in one run, a column mapping for CSV logs,
//! and clear errors for malformed input.
//!
//! Every value is checked against the numbers obp 0.5.7 computed on the
//! same data (`fixtures/obp/expected.json`, from `make_fixtures.py`); the
//! compressed and reshaped files are made here from those fixtures.

use clap::Parser;
use nudge_sim::ope::{self, Args, Outcome};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/obp")
        .join(name)
        .display()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn try_evaluate(args: &[&str]) -> anyhow::Result<Outcome> {
    let cli = Cli::try_parse_from(std::iter::once("evaluate").chain(args.iter().copied()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ope::run(&cli.args)
}

fn evaluate(args: &[&str]) -> Outcome {
    try_evaluate(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn value(out: &Outcome, estimator: &str) -> f64 {
    out.candidates[0]
        .1
        .estimates
        .iter()
        .find(|e| e.name == estimator)
        .unwrap_or_else(|| panic!("no estimate {estimator}"))
        .value
}

/// The soft synthetic candidate with the supplied reward model agrees with
/// obp on ipw, snipw, dm and dr.
fn assert_obp(out: &Outcome, what: &str) {
    let exp = expected();
    assert_eq!(out.candidates[0].1.n, 400, "{what}");
    for name in ["ipw", "snipw", "dm", "dr"] {
        let want = exp["synthetic"]["soft"][name].as_f64().unwrap();
        let ours = value(out, name);
        assert!(
            (ours - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{what}: {name}: {ours} vs obp {want}"
        );
    }
}

fn soft(log: &str, target: &str, q: &str) -> Outcome {
    evaluate(&[
        "--log",
        log,
        "--target-probs",
        target,
        "--reward-model",
        q,
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
    ])
}

/// The reader threads (the default) and `--inline-read` give the same
/// figures, to the bit; errors are compared in the malformed-input test.
#[test]
fn reading_on_one_thread_gives_what_the_reader_threads_give() {
    let (log, t, q) = (
        fixture("synthetic.obd.csv"),
        fixture("synthetic_target_soft.csv"),
        fixture("synthetic_reward_model.csv"),
    );
    let threads = soft(&log, &t, &q);
    let inline = evaluate(&[
        "--log",
        &log,
        "--target-probs",
        &t,
        "--reward-model",
        &q,
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
        "--inline-read",
    ]);
    assert_obp(&inline, "--inline-read");
    let figures = |o: &Outcome| -> Vec<(String, u64, u64)> {
        o.candidates[0]
            .1
            .estimates
            .iter()
            .map(|e| (e.name.to_string(), e.value.to_bits(), e.stderr.to_bits()))
            .collect()
    };
    assert_eq!(figures(&threads), figures(&inline));
}

fn gzip(src: &str, dst: &Path) -> String {
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(dst).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&std::fs::read(src).unwrap()).unwrap();
    enc.finish().unwrap();
    dst.display().to_string()
}

fn zstd(src: &str, dst: &Path) -> String {
    let bytes = zstd::encode_all(std::fs::read(src).unwrap().as_slice(), 3).unwrap();
    std::fs::write(dst, bytes).unwrap();
    dst.display().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn gzip_and_zstd_logs_and_per_event_files_are_read_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jsonl_gz = gzip(&fixture("synthetic.jsonl"), &d.join("log.jsonl.gz"));
    let jsonl_zst = zstd(&fixture("synthetic.jsonl"), &d.join("log.jsonl.zst"));
    let csv_gz = gzip(&fixture("synthetic.obd.csv"), &d.join("log.csv.gz"));
    let csv_zst = zstd(&fixture("synthetic.obd.csv"), &d.join("log.csv.zst"));
    let t_gz = gzip(&fixture("synthetic_target_soft.csv"), &d.join("t.csv.gz"));
    let q_zst = zstd(&fixture("synthetic_reward_model.csv"), &d.join("q.csv.zst"));
    let obd_gz = format!("obd:{csv_gz}");
    for log in [&jsonl_gz, &jsonl_zst, &csv_gz, &csv_zst, &obd_gz] {
        assert_obp(&soft(log, &t_gz, &q_zst), log);
    }
}

#[test]
fn a_csv_log_is_recognised_by_its_extension_and_a_csv_named_otherwise_is_explained() {
    // No `obd:` prefix: `.csv` is enough.
    let t = fixture("synthetic_target_soft.csv");
    let q = fixture("synthetic_reward_model.csv");
    assert_obp(&soft(&fixture("synthetic.obd.csv"), &t, &q), "plain .csv");
    // A CSV with another name is read as JSONL, and the error says what to do.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("synthetic.obd.csv")).unwrap();
    let log = write(dir.path(), "log.txt", &text);
    let err = try_evaluate(&["--log", &log, "--target-probs", &t])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{log}:1: expected a JSON object"))
            && err.contains("looks like CSV")
            && err.contains("obd:PATH"),
        "{err}"
    );
}

/// The long fixture as a wide table: event id → action → value.
fn table(path: &str) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let mut out: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        out.entry(f[0].parse().unwrap())
            .or_default()
            .insert(f[1].to_string(), f[2].parse().unwrap());
    }
    out
}

/// Writes `t` wide with key column `key` and the given action columns
/// (header names and the action each holds).
fn wide(
    dir: &Path,
    name: &str,
    t: &BTreeMap<u64, BTreeMap<String, f64>>,
    key: &str,
    cols: &[(String, String)],
) -> String {
    let mut text = key.to_string();
    for (h, _) in cols {
        text.push(',');
        text.push_str(h);
    }
    text.push('\n');
    for (id, row) in t {
        text.push_str(&id.to_string());
        for (_, a) in cols {
            // `{:?}` prints an f64 so that it reads back exactly.
            text.push_str(&format!(",{:?}", row[a]));
        }
        text.push('\n');
    }
    write(dir, name, &text)
}

#[test]
fn wide_target_and_reward_model_files_are_read_as_obp_writes_them_and_by_action_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = table(&fixture("synthetic_target_soft.csv"));
    let q = table(&fixture("synthetic_reward_model.csv"));
    let k = t[&0].len();
    // OBP's layout: round,p0..p3 and round,q0..q3, column i is action i.
    let numbered = |p: &str| -> Vec<(String, String)> {
        (0..k).map(|i| (format!("{p}{i}"), i.to_string())).collect()
    };
    let t_obp = wide(d, "t_wide.csv", &t, "round", &numbered("p"));
    let q_obp = wide(d, "q_wide.csv", &q, "round", &numbered("q"));
    // One column per action id, in another order than the actions'.
    let by_id: Vec<(String, String)> = ["3", "1", "0", "2"]
        .iter()
        .map(|a| (a.to_string(), a.to_string()))
        .collect();
    let t_ids = wide(d, "t_ids.csv", &t, "event_id", &by_id);
    let q_ids = wide(d, "q_ids.csv", &q, "event_id", &by_id);
    let obd = fixture("synthetic.obd.csv");
    let jsonl = fixture("synthetic.jsonl");
    assert_obp(&soft(&obd, &t_obp, &q_obp), "round,p0,… / round,q0,…");
    assert_obp(&soft(&jsonl, &t_ids, &q_ids), "event_id,3,1,0,2");
    // Wide and long mixed, compressed.
    let t_gz = gzip(&t_obp, &d.join("t_wide.csv.gz"));
    assert_obp(
        &soft(&jsonl, &t_gz, &fixture("synthetic_reward_model.csv")),
        "wide .csv.gz with a long reward model",
    );
}

#[test]
fn several_switch_taus_and_dros_lambdas_give_one_keyed_estimate_each() {
    let exp = expected();
    let base = [
        "--log",
        &fixture("synthetic.jsonl"),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "dm,dr,switch-dr,dros",
        "--bootstrap",
        "50",
    ]
    .map(String::from);
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        evaluate(&a)
    };
    let out = run(&["--switch-tau", "0,2,inf", "--dros-lambda", "5,0"]);
    let names: Vec<&str> = out.candidates[0]
        .1
        .estimates
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "dm",
            "dr",
            "switch-dr(tau=0)",
            "switch-dr(tau=2)",
            "switch-dr(tau=inf)",
            "dros(lambda=5)",
            "dros(lambda=0)"
        ]
    );
    let soft = &exp["synthetic"]["soft"];
    assert_eq!(exp["synthetic"]["switch_tau"].as_f64(), Some(2.0));
    assert_eq!(exp["synthetic"]["dros_lambda"].as_f64(), Some(5.0));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1.0);
    let v = |n: &str| value(&out, n);
    assert!(close(
        v("switch-dr(tau=2)"),
        soft["switch-dr"].as_f64().unwrap()
    ));
    assert!(close(v("dros(lambda=5)"), soft["dros"].as_f64().unwrap()));
    // τ = ∞ is DR; τ = 0 and λ = 0 keep the reward model only (DM).
    assert!(close(v("switch-dr(tau=inf)"), v("dr")));
    assert!(close(v("switch-dr(tau=0)"), v("dm")));
    assert!(close(v("dros(lambda=0)"), v("dm")));
    // Each has its own interval.
    let e = &out.candidates[0].1.estimates[3];
    assert!(e.bootstrap_ci.is_some() && e.ci_low <= e.value && e.value <= e.ci_high);
    // One value: the key stays as it was.
    let one = run(&["--switch-tau", "2", "--dros-lambda", "5"]);
    assert!(close(value(&one, "switch-dr"), v("switch-dr(tau=2)")));
    assert!(close(value(&one, "dros"), v("dros(lambda=5)")));
    let err = try_evaluate(&[
        "--log",
        &fixture("synthetic.jsonl"),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "switch-dr",
        "--switch-tau",
        "1,-1",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("switch-tau = -1"), "{err}");
}

/// The synthetic OBD log with the analyst's own column names.
fn renamed_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(fixture("synthetic.obd.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert_eq!(
        header,
        "timestamp,item_id,click,propensity_score,user_feature_0,user_feature_1,user_feature_2"
    );
    let mut out = String::from("ts,item,clicked,pscore,x_0,x_1,x_2,id\n");
    for (i, l) in lines.enumerate() {
        out.push_str(&format!("{l},{i}\n"));
    }
    write(dir, "mine.csv", &out)
}

#[test]
fn a_column_mapping_reads_a_csv_log_with_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let log = renamed_log(dir.path());
    let cols = "action=item,reward=clicked,propensity=pscore,event_id=id,timestamp=ts,features=x_*";
    let out = evaluate(&[
        "--log",
        &log,
        "--columns",
        cols,
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
    ]);
    assert_obp(&out, "mapped columns");
    // The mapped features are the ones a fitted reward model uses: the same
    // ridge fit as on the OBD names.
    let exp = expected();
    let out = evaluate(&[
        "--log",
        &log,
        "--columns",
        cols,
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--fit-reward-model",
        "ridge",
        "--estimators",
        "dm,dr",
        "--since",
        "2026-11-26T10:00:00Z",
        "--bootstrap",
        "0",
    ]);
    for name in ["dm", "dr"] {
        let want = exp["synthetic"]["fitted"]["ridge"][name].as_f64().unwrap();
        assert!((value(&out, name) - want).abs() < 1e-9, "{name}");
    }
}

/// Malformed input of every kind: the error names the file, the line (or
/// header), the column or field, and what was expected.
#[test]
fn malformed_inputs_are_errors_naming_file_line_column_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let obd_ok = "item_id,click,propensity_score\n0,1,0.5\n1,0,0.5\n";
    let long_ok = "event_id,action,probability\n0,0,0.5\n0,1,0.5\n1,0,0.5\n1,1,0.5\n";
    let garbage_gz = write(d, "garbage.csv.gz", "this is not gzip\n");
    let garbage_zst = write(d, "garbage.jsonl.zst", "this is not zstd\n");
    // (what, log file, target file, reward-model file, extra args, expected parts)
    type Case<'a> = (
        &'a str,
        (&'a str, &'a str),
        (&'a str, &'a str),
        Option<(&'a str, &'a str)>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            "a non-number in a CSV log",
            (
                "a.csv",
                "item_id,click,propensity_score\n0,1,0.5\n1,yes,0.5\n",
            ),
            ("t.csv", long_ok),
            None,
            &[],
            &["a.csv:3: field `click`", "\"yes\" is not a number"],
        ),
        (
            "a short CSV row",
            ("b.csv", "item_id,click,propensity_score\n0,1,0.5\n1,0\n"),
            ("t.csv", long_ok),
            None,
            &[],
            &["b.csv:3: malformed CSV: 2 fields, but the header has 3 (a row shorter"],
        ),
        (
            "a long CSV row",
            (
                "b2.csv",
                "item_id,click,propensity_score\n0,1,0.5\n1,0,0.5,7\n",
            ),
            ("t.csv", long_ok),
            None,
            &[],
            &["b2.csv:3: malformed CSV: 4 fields, but the header has 3 (a row longer"],
        ),
        (
            "a missing OBD column",
            ("c.csv", "item,click,propensity_score\n0,1,0.5\n"),
            ("t.csv", long_ok),
            None,
            &[],
            &[
                "c.csv:1: missing column `item_id`",
                "--columns action=COLUMN",
                "the header is `item,click,propensity_score`",
            ],
        ),
        (
            "a mapped column that is not there",
            ("d.csv", obd_ok),
            ("t.csv", long_ok),
            None,
            &["--columns", "reward=clicked"],
            &["d.csv:1: missing column `clicked` (mapped to reward by --columns)"],
        ),
        (
            "an unknown --columns role",
            ("e.csv", obd_ok),
            ("t.csv", long_ok),
            None,
            &["--columns", "award=click"],
            &["--columns: unknown role \"award\"", "roles: action, reward"],
        ),
        (
            "--columns on a JSONL log",
            ("f.jsonl", "{}\n"),
            ("t.csv", long_ok),
            None,
            &["--columns", "reward=click"],
            &["--columns maps the columns of a CSV log"],
        ),
        (
            "a bad timestamp with a time filter",
            (
                "g.csv",
                "timestamp,item_id,click,propensity_score\nyesterday,0,1,0.5\n",
            ),
            ("t.csv", long_ok),
            None,
            &["--since", "2026-01-01T00:00:00Z"],
            &["g.csv:2: field `timestamp`", "is not a timestamp (RFC 3339"],
        ),
        (
            "a bad target header",
            ("h.csv", obd_ok),
            ("t_bad_header.csv", "id,act,prob\n0,0,1\n"),
            None,
            &[],
            &[
                "t_bad_header.csv:1: the header must be `event_id,action,probability` (long)",
                "`round,p0,p1,…`",
                "found `id,act,prob`",
            ],
        ),
        (
            "a non-number in a wide target file",
            ("i.csv", obd_ok),
            ("t_wide_bad.csv", "round,p0,p1\n0,0.5,0.5\n1,0.5,half\n"),
            None,
            &[],
            &[
                "t_wide_bad.csv:3: field `p1` (column 3)",
                "\"half\" is not a number",
            ],
        ),
        (
            "a wide target row of the wrong length",
            ("j.csv", obd_ok),
            ("t_wide_short.csv", "round,p0,p1\n0,0.5,0.5\n1,1\n"),
            None,
            &[],
            &["t_wide_short.csv:3: expected 3 fields (as many as the header), found 2"],
        ),
        (
            "a duplicate action in a wide header",
            ("k.csv", obd_ok),
            ("t_dup.csv", "event_id,0,1,0\n0,0.5,0.5,0\n"),
            None,
            &[],
            &["t_dup.csv:1: column 4: action \"0\" appears twice"],
        ),
        (
            "a non-number in a wide reward model",
            ("l.csv", obd_ok),
            ("t.csv", long_ok),
            Some(("q_wide_bad.csv", "round,q0,q1\n0,0.1,nan?\n")),
            &["--estimators", "dm"],
            &[
                "q_wide_bad.csv:2: field `q1` (column 3)",
                "\"nan?\" is not a number",
            ],
        ),
        (
            "a long reward model with an infinite value",
            ("m.csv", obd_ok),
            ("t.csv", long_ok),
            Some(("q_inf.csv", "event_id,action,estimate\n0,0,inf\n0,1,0\n")),
            &["--estimators", "dm"],
            &["q_inf.csv:2: field `estimate` (column 3): inf is not finite"],
        ),
        (
            "an event missing from the target file",
            ("n.csv", obd_ok),
            (
                "t_short.csv",
                "event_id,action,probability\n0,0,0.5\n0,1,0.5\n",
            ),
            None,
            &[],
            &["t_short.csv: no rows for event \"1\"", "n.csv:3"],
        ),
        (
            "a JSONL line that is not JSON",
            ("o.jsonl", "{\"event_id\": \"0\"\n"),
            ("t.csv", long_ok),
            None,
            &[],
            &["o.jsonl:1: field `"],
        ),
        (
            "a bad --reward-window",
            ("p.csv", obd_ok),
            ("t.csv", long_ok),
            None,
            &["--reward-window", "a day"],
            &["--reward-window"],
        ),
    ];
    for (what, (log_name, log_text), (t_name, t_text), q, extra, want) in cases {
        let log = write(d, log_name, log_text);
        let t = write(d, t_name, t_text);
        let mut args = vec!["--log", log.as_str(), "--target-probs", t.as_str()];
        let q_path;
        if let Some((q_name, q_text)) = q {
            q_path = write(d, q_name, q_text);
            args.extend(["--reward-model", q_path.as_str()]);
        }
        args.extend(["--bootstrap", "0"]);
        args.extend(extra.iter());
        let err = match try_evaluate(&args) {
            Ok(_) => panic!("{what}: no error"),
            Err(e) => format!("{e:#}"),
        };
        for part in *want {
            assert!(err.contains(part), "{what}: {err:?} lacks {part:?}");
        }
        // Reading on one thread gives the same error as the reader threads.
        args.push("--inline-read");
        let inline = format!("{:#}", try_evaluate(&args).unwrap_err());
        assert_eq!(inline, err, "{what}: --inline-read");
    }
    // Corrupt compressed files are named too.
    for log in [&garbage_gz, &garbage_zst] {
        let t = write(d, "t.csv", long_ok);
        let err = format!(
            "{:#}",
            try_evaluate(&["--log", log, "--target-probs", &t]).unwrap_err()
        );
        assert!(err.contains(log.as_str()), "{err}");
    }
}

#[test]
fn ipw_and_snipw_carry_an_empirical_bernstein_interval_and_on_request_a_confidence_sequence() {
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--log",
            &fixture("synthetic.jsonl"),
            "--target-probs",
            &fixture("synthetic_target_soft.csv"),
            "--reward-model",
            &fixture("synthetic_reward_model.csv"),
            "--estimators",
            "ipw,snipw,dr",
            "--bootstrap",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        try_evaluate(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let plain = run(&[]).unwrap();
    let ev = &plain.candidates[0].1;
    for e in &ev.estimates {
        let weighted = e.name != "dr";
        assert_eq!(e.eb_ci.is_some(), weighted, "{}", e.name);
        assert_eq!(e.cs, None, "{}: only on request", e.name);
        if let Some((lo, hi)) = e.eb_ci {
            // Wider than the normal interval, around the same value.
            assert!(lo < e.normal_ci.0 && e.normal_ci.1 < hi, "{}", e.name);
            assert!((0.5 * (lo + hi) - e.value).abs() < 1e-12);
        }
    }

    let with_cs = run(&["--confidence-sequence", "--reward-range", "0,1"]).unwrap();
    let ev = &with_cs.candidates[0].1;
    let (ipw, snipw) = (&ev.estimates[0], &ev.estimates[1]);
    let cs = ipw.cs.expect("ipw has a sequence");
    assert!(
        cs.0 < ipw.value && ipw.value < cs.1,
        "{cs:?} vs {}",
        ipw.value
    );
    assert!(0.0 <= cs.0 && cs.1 <= 1.0, "{cs:?}");
    // One sequence for the value both estimate.
    assert_eq!(snipw.cs, Some(cs));
    assert_eq!(ev.estimates[2].cs, None);
    let json = nudge_sim::ope::report::candidate_json("c", ev, &with_cs);
    assert_eq!(json["estimates"]["ipw"]["cs_low"].as_f64(), Some(cs.0));
    assert_eq!(json["estimates"]["ipw"]["cs_high"].as_f64(), Some(cs.1));
    assert!(json["estimates"]["snipw"]["eb_ci_low"].is_f64());
    assert!(json["estimates"]["dr"].get("eb_ci_low").is_none());

    // A range the rewards break, and one that is not a range.
    let err = run(&["--reward-range", "0,0.5"]).unwrap_err().to_string();
    assert!(
        err.contains("reward-range") && err.contains("[0, 0.5]"),
        "{err}"
    );
    let err = run(&["--reward-range", "1,0"]).unwrap_err().to_string();
    assert!(
        err.contains("--reward-range") && err.contains("LO < HI"),
        "{err}"
    );
}

#[test]
fn mips_over_action_embeddings_agrees_with_obp_and_names_a_missing_action() {
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("embed.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut log, mut target) = (String::new(), String::from("event_id,action,probability\n"));
    for (i, ev) in fx["events"].as_array().unwrap().iter().enumerate() {
        let b = ev["b"].as_array().unwrap();
        let a = ev["action"].as_u64().unwrap() as usize;
        let candidates: Vec<Value> = b
            .iter()
            .enumerate()
            .map(|(j, p)| serde_json::json!({"id": format!("a{j}"), "probability": p}))
            .collect();
        let line = serde_json::json!({
            "event_id": format!("e{i}"), "policy": "logger", "decided_at": "2026-11-26T10:00:00Z",
            "context": {}, "candidates": candidates, "action": format!("a{a}"),
            "probability": b[a], "reward": ev["reward"], "outcome_final": true,
        });
        log.push_str(&format!("{line}\n"));
        for (j, p) in ev["e"].as_array().unwrap().iter().enumerate() {
            target.push_str(&format!("e{i},a{j},{p}\n"));
        }
    }
    let mut emb = String::from("action,genre,format\n");
    for (a, cats) in fx["deterministic"].as_array().unwrap().iter().enumerate() {
        emb.push_str(&format!("a{a},g{},f{}\n", cats[0], cats[1]));
    }
    let log = write(d, "log.jsonl", &log);
    let target = write(d, "target.csv", &target);
    let emb_path = write(d, "embeddings.csv", &emb);
    let args = |emb: &str| {
        vec![
            "--log".to_string(),
            log.clone(),
            "--target-probs".into(),
            target.clone(),
            "--estimators".into(),
            "ipw".into(),
            "--bootstrap".into(),
            "0".into(),
            "--action-embeddings".into(),
            emb.to_string(),
        ]
    };
    let a = args(&emb_path);
    let out = try_evaluate(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let want = fx["expected"]["mipw_deterministic"].as_f64().unwrap();
    let ours = value(&out, "mipw");
    assert!(
        (ours - want).abs() <= 1e-9 * want.abs(),
        "mipw {ours} vs obp {want}"
    );
    // The point of it: the same value by a smaller-variance route.
    let est = &out.candidates[0].1.estimates;
    assert!(est[1].stderr < est[0].stderr, "{est:?}");

    // The same table as Parquet (an integer column read as text too).
    let n = fx["deterministic"].as_array().unwrap().len();
    let cats = |k: usize| -> arrow_array::ArrayRef {
        let v: Vec<i64> = fx["deterministic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[k].as_i64().unwrap())
            .collect();
        std::sync::Arc::new(arrow_array::Int64Array::from(v))
    };
    let actions: Vec<String> = (0..n).map(|a| format!("a{a}")).collect();
    let genre: Vec<String> = (0..n)
        .map(|a| format!("g{}", fx["deterministic"][a][0]))
        .collect();
    let batch = arrow_array::RecordBatch::try_from_iter([
        (
            "action",
            std::sync::Arc::new(arrow_array::StringArray::from(actions)) as arrow_array::ArrayRef,
        ),
        (
            "genre",
            std::sync::Arc::new(arrow_array::StringArray::from(genre)) as arrow_array::ArrayRef,
        ),
        ("format", cats(1)),
    ])
    .unwrap();
    let pq_path = d.join("embeddings.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq_path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let a = args(pq_path.to_str().unwrap());
    let pq = try_evaluate(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    // Categories are only compared for equality: `f1` and `1` group alike.
    assert_eq!(value(&pq, "mipw"), ours);

    let short = write(
        d,
        "short.csv",
        &emb.lines().take(5).collect::<Vec<_>>().join("\n"),
    );
    let a = args(&short);
    let err = try_evaluate(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no row in --action-embeddings") && err.contains("genre,format"),
        "{err}"
    );
}

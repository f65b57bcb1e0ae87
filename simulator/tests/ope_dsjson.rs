//! Vowpal Wabbit DSJSON in and out: `nudge-sim export --as dsjson` writes
//! the file VW read (`fixtures/vw/make_vw_fixtures.py`, vowpalwabbit from
//! PyPI), and `evaluate` on it gives VW's own offline IPS figure for VW's
//! greedy policy. No Python runs here.

use clap::Parser;
use nudge_sim::ope::source::{Filter, LogRecord, Source};
use nudge_sim::ope::{self, Args, Outcome};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn fixture(path: &str) -> String {
    format!("{}/fixtures/vw/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn policy_file() -> String {
    format!(
        "{}/scenarios/push_fatigue_capped.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs the built binary; its stdout, or a panic with its stderr.
fn sim(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .args(args)
        .output()
        .expect("nudge-sim runs");
    assert!(
        out.status.success(),
        "nudge-sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn export(to: &Path) -> Value {
    let out = sim(&[
        "export",
        "--log",
        &fixture("push_fatigue.jsonl"),
        "--to",
        to.to_str().unwrap(),
        "--policies",
        &policy_file(),
        "--format",
        "json",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// `evaluate`'s IPW on `log` for VW's greedy target, via the binary.
fn ipw(log: &str) -> f64 {
    let out = sim(&[
        "evaluate",
        "--log",
        log,
        "--target-probs",
        &fixture("vw_greedy_target.csv"),
        "--estimators",
        "ipw",
        "--bootstrap",
        "0",
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["estimates"]["ipw"]["value"].as_f64().unwrap()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn evaluate(args: &[&str]) -> Outcome {
    let mut argv = vec!["evaluate"];
    argv.extend_from_slice(args);
    ope::run(&Cli::try_parse_from(argv).unwrap().args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn records(log: &str, filter: &Filter) -> anyhow::Result<Vec<LogRecord>> {
    Source::parse(log).open(filter, false)?.collect()
}

#[test]
fn export_writes_the_file_vw_read_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("push_fatigue.dsjson");
    let report = export(&to);
    assert_eq!(report["dsjson"]["written"], 600, "{report}");
    assert_eq!(report["dsjson"]["not_final"], 0);
    let written = std::fs::read(&to).unwrap();
    let committed = std::fs::read(fixture("push_fatigue.dsjson")).unwrap();
    assert!(
        written == committed,
        "the export differs from fixtures/vw/push_fatigue.dsjson: run make_vw_fixtures.py again"
    );
}

#[test]
fn reading_the_export_back_gives_the_logged_records() {
    let logged = records(&fixture("push_fatigue.jsonl"), &Filter::default()).unwrap();
    let read = records(&fixture("push_fatigue.dsjson"), &Filter::default()).unwrap();
    assert_eq!(logged.len(), read.len());
    let mut excluded = 0;
    for (a, b) in logged.iter().zip(&read) {
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.policy, b.policy);
        assert_eq!(a.decided_at, b.decided_at);
        assert_eq!(a.action, b.action);
        assert_eq!(a.pscore, b.pscore);
        assert_eq!(a.reward, b.reward);
        assert!(b.reward_final);
        assert_eq!(a.context, b.context);
        // Eligible candidates in the log's order, then the excluded ones.
        let mut ca = a.candidates.clone();
        let mut cb = b.candidates.clone();
        ca.sort_by(|x, y| x.id.cmp(&y.id));
        cb.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(ca, cb, "event {}", a.event_id);
        excluded += a.candidates.iter().filter(|c| !c.eligible()).count();
    }
    // The fixture exercises guardrail exclusions (`_excluded`).
    assert!(excluded > 0);
}

#[test]
fn ipw_on_the_export_equals_vws_own_ips_figure() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("vw_expected.json")).unwrap())
            .unwrap();
    let vw_loss = expected["vw_average_loss"].as_f64().unwrap();
    let nudge = ipw(&fixture("push_fatigue.dsjson"));

    // The same estimate in f64, from the file and the target alone.
    let target = std::fs::read_to_string(fixture("vw_greedy_target.csv")).unwrap();
    let greedy: std::collections::HashMap<&str, &str> = target
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2] == "1").then(|| (f[0], f[1]))
        })
        .collect();
    let (mut sum, mut abs_sum, mut n) = (0.0, 0.0, 0.0);
    for line in std::fs::read_to_string(fixture("push_fatigue.dsjson"))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        let index = v["_labelIndex"].as_u64().unwrap() as usize;
        let logged = v["c"]["_multi"][index]["_arm"].as_str().unwrap();
        let cost = v["_label_cost"].as_f64().unwrap();
        let p = v["_label_probability"].as_f64().unwrap();
        if greedy[v["EventId"].as_str().unwrap()] == logged {
            sum += -cost / p;
            abs_sum += cost.abs() / p;
        }
        n += 1.0;
    }
    assert!((nudge - sum / n).abs() <= 1e-12, "{nudge} vs {}", sum / n);

    // VW reads cost and probability as f32 and divides in f32: each term
    // carries at most three roundings of 2^-24 relative, and it sums in
    // f64, so the gap is at most 3·2^-24·mean(|cost|/p over matches).
    let tolerance = 3.0 * f64::from(f32::EPSILON) / 2.0 * abs_sum / n;
    let gap = (nudge + vw_loss).abs();
    eprintln!(
        "nudge-sim IPW {nudge}, VW average loss {vw_loss}, gap {gap:e}, tolerance {tolerance:e}"
    );
    assert!(
        gap <= tolerance,
        "nudge-sim IPW {nudge} vs VW's −(average loss) {}: gap {gap:e} > {tolerance:e}",
        -vw_loss
    );
    assert!(tolerance < 1e-6);
}

#[test]
fn compressed_dsjson_reads_as_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ipw(&fixture("push_fatigue.dsjson"));
    let expect = records(&fixture("push_fatigue.dsjson"), &Filter::default()).unwrap();
    for name in ["log.dsjson.gz", "log.dsjson.zst"] {
        let to = dir.path().join(name);
        export(&to);
        let to = to.to_str().unwrap();
        assert_eq!(ipw(to), plain, "{name}");
        let got = records(to, &Filter::default()).unwrap();
        assert_eq!(got.len(), expect.len());
        for (a, b) in got.iter().zip(&expect) {
            assert_eq!(
                (&a.event_id, &a.action, a.pscore, a.reward),
                (&b.event_id, &b.action, b.pscore, b.reward)
            );
        }
    }
}

#[test]
fn skip_learn_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skip.dsjson");
    let text = std::fs::read_to_string(fixture("push_fatigue.dsjson")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .take(5)
        .enumerate()
        .map(|(i, l)| {
            if i % 2 == 1 {
                l.replacen('{', "{\"_skipLearn\":true,", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = evaluate(&[
        "--log",
        log.to_str().unwrap(),
        "--target-probs",
        &fixture("vw_greedy_target.csv"),
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.skipped_skip_learn, 2);
    assert_eq!(out.candidates[0].1.n, 3);
    let warned = &out.candidates[0].1.diagnostics.warnings;
    assert!(
        warned
            .iter()
            .any(|w| w.contains("2 DSJSON lines") && w.contains("_skipLearn")),
        "{warned:?}"
    );
}

const GOOD: &str = r#"{"_label_cost":-1.0,"_label_probability":0.8,"_label_Action":2,"_labelIndex":1,"Timestamp":"2026-11-26T10:00:00Z","EventId":"e1","a":[2,1,3],"c":{"hour":9,"_multi":[{"_arm":"x"},{"_arm":"y"},{"_id":7}]},"p":[0.8,0.1,0.1]}"#;

/// Reads `GOOD` then `bad` (line 2); the error.
fn error_of(bad: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.dsjson");
    std::fs::write(&path, format!("{GOOD}\n{bad}\n")).unwrap();
    let err = records(path.to_str().unwrap(), &Filter::default()).unwrap_err();
    format!("{err:#}").replace(&path.display().to_string(), "FILE")
}

fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(GOOD).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn a_good_line_maps_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.dsjson");
    std::fs::write(&path, format!("{GOOD}\n")).unwrap();
    let filter = Filter {
        policy_id: Some("push_send".into()),
        ..Filter::default()
    };
    let recs = records(path.to_str().unwrap(), &filter).unwrap();
    let r = &recs[0];
    assert_eq!(
        (r.action.as_str(), r.pscore, r.reward),
        ("y", 0.8, Some(1.0))
    );
    // No policy in DSJSON: the filter's, so --policy-id does not drop it.
    assert_eq!(r.policy.as_deref(), Some("push_send"));
    let ids: Vec<(&str, f64)> = r
        .candidates
        .iter()
        .map(|c| (c.id.as_str(), c.probability))
        .collect();
    assert_eq!(ids, [("x", 0.1), ("y", 0.8), ("7", 0.1)]);
    assert_eq!(r.context, Some(serde_json::json!({"hour": 9})));
}

#[test]
fn malformed_lines_name_the_file_line_and_field() {
    let cases: Vec<(String, &str)> = vec![
        ("[1,2]".into(), "FILE:2: expected a JSON object"),
        (
            edited(|v| v["_labelIndex"] = 3.into()),
            "FILE:2: field `_labelIndex`: 3: expected the logged action's index from 0, below the 3",
        ),
        (
            edited(|v| v["_label_Action"] = 1.into()),
            "FILE:2: field `_label_Action`: 1 but `_labelIndex` is 1: expected 2",
        ),
        (
            edited(|v| v["a"] = serde_json::json!([1, 2, 3])),
            "FILE:2: field `a[0]`: 1 but `_labelIndex` is 1: expected 2",
        ),
        (
            edited(|v| v["p"] = serde_json::json!([0.8, 0.2])),
            "FILE:2: field `p`: 2 probabilities for 3 actions",
        ),
        (
            edited(|v| v["a"] = serde_json::json!([2, 1, 4])),
            "FILE:2: field `a[2]`: 4: expected an action number from 1 to 3",
        ),
        (
            edited(|v| v["_label_probability"] = "high".into()),
            "FILE:2: field `_label_probability`: invalid type: string \"high\", expected f64",
        ),
        (
            edited(|v| v["_label_probability"] = 0.5.into()),
            "FILE:2: field `_label_probability`: 0.5 but `p[0]`",
        ),
        (
            edited(|v| {
                v.as_object_mut().unwrap().remove("c");
            }),
            "FILE:2: field `c`: missing: expected the shared context",
        ),
        (
            edited(|v| v["c"]["_multi"][1]["_arm"] = serde_json::json!({"a": 1})),
            "FILE:2: field `c._multi[1]._arm`: {\"a\":1}: expected the action id",
        ),
        (
            edited(|v| v["Timestamp"] = "yesterday".into()),
            "FILE:2: field `Timestamp`: \"yesterday\": expected an RFC 3339 time",
        ),
        (
            edited(|v| {
                v.as_object_mut().unwrap().remove("_labelIndex");
            }),
            "FILE:2: field `_labelIndex`: missing",
        ),
    ];
    for (line, want) in cases {
        let err = error_of(&line);
        assert!(err.contains(want), "{line}\n  got:  {err}\n  want: {want}");
    }
}

#[test]
fn pdrop_above_zero_is_refused_since_the_estimates_would_be_biased() {
    let err = error_of(&edited(|v| v["pdrop"] = 0.25.into()));
    assert!(
        err.contains("FILE:2: field `pdrop`: 0.25") && err.contains("1/(1 − pdrop)"),
        "{err}"
    );
    let err = error_of(&edited(|v| v["pdrop"] = 1.0.into()));
    assert!(err.contains("field `pdrop`: 1 is not in [0, 1)"), "{err}");
    // pdrop 0 is no drop at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0.dsjson");
    std::fs::write(&path, edited(|v| v["pdrop"] = 0.0.into()) + "\n").unwrap();
    assert_eq!(
        records(path.to_str().unwrap(), &Filter::default())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn export_writes_only_final_outcomes_and_counts_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("open.jsonl");
    let text = std::fs::read_to_string(fixture("push_fatigue.jsonl")).unwrap();
    // Two events without their outcome yet, decided at 00:00:00 and 00:00:36.
    let open: Vec<String> = text
        .lines()
        .take(2)
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("outcome_final");
            o.insert("reward".into(), Value::Null);
            v.to_string()
        })
        .collect();
    std::fs::write(&log, open.join("\n") + "\n").unwrap();
    let to = dir.path().join("open.dsjson");
    let out = sim(&[
        "export",
        "--log",
        log.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--reward-window",
        "1h",
        "--default-reward=-0.5",
        "--settle",
        "0s",
        "--as-of",
        "2026-01-01T01:00:10Z",
        "--format",
        "json",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dsjson"]["written"], 1, "{report}");
    assert_eq!(report["dsjson"]["defaulted"], 1);
    assert_eq!(report["dsjson"]["not_final"], 1);
    assert!(report["warnings"][0].as_str().unwrap().contains("1 events"));
    let recs = records(to.to_str().unwrap(), &Filter::default()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reward, Some(-0.5));
}

//! `nudge-sim tune` end to end: a grid over the unsubscribe weight on the
//! push scenario trades opens for unsubscribes, and the Pareto front is
//! marked.

use std::path::Path;
use std::process::Command;

#[test]
fn a_heavier_unsubscribe_penalty_trades_opens_for_fewer_unsubscribes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("tradeoff.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .arg("tune")
        .arg(root.join("scenarios/push_send.toml"))
        .args([
            "-w",
            "opened=1",
            "-w",
            "unsubscribed=0..-20",
            "--steps",
            "3",
        ])
        .args(["--horizon", "4000", "--format", "json", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = t["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 3);
    let rate = |i: usize, s: &str| settings[i]["outcomes"][s].as_f64().unwrap();
    let w = |i: usize| settings[i]["weights"]["unsubscribed"].as_f64().unwrap();
    assert_eq!((w(0), w(1), w(2)), (0.0, -10.0, -20.0));
    for (i, s) in settings.iter().enumerate() {
        eprintln!(
            "unsubscribed={}: opened {:.4}, unsubscribed {:.5}, pareto {}",
            w(i),
            rate(i, "opened"),
            rate(i, "unsubscribed"),
            s["pareto"]
        );
    }
    // Measured (seed 7, 4000 rounds): see the printout; ignoring
    // unsubscribes gives the most opens and the most unsubscribes, a
    // penalty of 20 cuts unsubscribes by more than a third.
    assert!(rate(2, "unsubscribed") < 0.67 * rate(0, "unsubscribed"));
    assert!(rate(2, "opened") < rate(0, "opened"));
    // The extremes are each best on one objective, so both are efficient.
    assert_eq!(settings[0]["pareto"], true);
    assert_eq!(settings[2]["pareto"], true);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("Pareto front"));
}

#[test]
fn a_weight_for_an_unknown_signal_is_a_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .arg("tune")
        .arg(root.join("scenarios/push_send.toml"))
        .args(["-w", "clicked=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no signal `clicked`") && err.contains("opened"),
        "{err}"
    );
}

#[test]
fn tuning_on_a_logged_run_re_scores_its_signals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let uniform = dir.path().join("uniform.toml");
    std::fs::write(
        &uniform,
        "id = \"uniform\"\nalgorithm = \"uniform\"\narms = [\"send_now\", \"send_later\", \"skip\"]\n",
    )
    .unwrap();
    let log = dir.path().join("log.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .arg("run")
        .arg(root.join("scenarios/push_send.toml"))
        .arg("--policy")
        .arg(&uniform)
        .args(["--horizon", "8000", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .arg("tune")
        .arg("--log")
        .arg(&log)
        .arg("--policy")
        .arg(root.join("../policies/push_send.toml"))
        .args([
            "-w",
            "opened=1",
            "-w",
            "unsubscribed=0..-20",
            "--steps",
            "3",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = t["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 3);
    assert_eq!(t["horizon"], 4000, "evaluated on the second half");
    let rate = |i: usize, s: &str| settings[i]["outcomes"][s].as_f64().unwrap();
    for (i, s) in settings.iter().enumerate() {
        eprintln!(
            "logged, unsubscribed={}: opened {:.4}, unsubscribed {:.5}",
            s["weights"]["unsubscribed"],
            rate(i, "opened"),
            rate(i, "unsubscribed")
        );
    }
    // The estimates are self-normalised IPW on 4000 uniform-logged events:
    // the penalty's effect on unsubscribes must still show (measured: see
    // the printout).
    assert!(rate(2, "unsubscribed") < rate(0, "unsubscribed"));
    assert!(rate(0, "opened") > 0.0 && rate(0, "opened") < 1.0);

    // A constraint halfway between the extremes: some settings meet it,
    // some do not, and the best is the feasible one with the most opens,
    // its margin with an interval from the estimate's standard error.
    let bound = 0.5 * (rate(0, "unsubscribed") + rate(2, "unsubscribed"));
    let out = Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
        .arg("tune")
        .arg("--log")
        .arg(&log)
        .arg("--policy")
        .arg(root.join("../policies/push_send.toml"))
        .args([
            "-w",
            "opened=1",
            "-w",
            "unsubscribed=0..-20",
            "--steps",
            "3",
        ])
        .args(["--subject-to", &format!("unsubscribed <= {bound}")])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_constrained(&c, "unsubscribed", bound);
    for s in c["settings"].as_array().unwrap() {
        let se = s["stderr"]["unsubscribed"].as_f64().unwrap();
        assert!(se > 0.0 && se < 0.01, "{se}");
    }
    let m = &c["best"]["margins"][0];
    let (lo, hi) = (
        m["interval"][0].as_f64().unwrap(),
        m["interval"][1].as_f64().unwrap(),
    );
    let margin = m["margin"].as_f64().unwrap();
    assert!(lo < margin && margin < hi, "{lo} {margin} {hi}");
    assert_eq!(c["best"]["certain"], lo >= 0.0);
}

/// Every setting is marked feasible exactly when it meets `signal <=
/// bound`, there are both kinds, and `best` is the feasible one with the
/// most opens, with its margin.
fn check_constrained(t: &serde_json::Value, signal: &str, bound: f64) {
    let settings = t["settings"].as_array().unwrap();
    let value = |s: &serde_json::Value, k: &str| s["outcomes"][k].as_f64().unwrap();
    for s in settings {
        assert_eq!(s["feasible"], value(s, signal) <= bound, "{s}");
    }
    let feasible: Vec<&serde_json::Value> =
        settings.iter().filter(|s| s["feasible"] == true).collect();
    assert!(!feasible.is_empty() && feasible.len() < settings.len());
    let best = feasible
        .iter()
        .max_by(|a, b| value(a, "opened").total_cmp(&value(b, "opened")))
        .unwrap();
    assert_eq!(t["best"]["weights"], best["weights"]);
    assert_eq!(t["best"]["objective"], "max opened");
    let m = &t["best"]["margins"][0];
    assert_eq!(m["constraint"], format!("{signal} <= {bound}"));
    assert!((m["margin"].as_f64().unwrap() - (bound - value(best, signal))).abs() < 1e-12);
}

#[test]
fn a_constraint_picks_the_best_feasible_setting_and_no_feasible_one_is_said() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let tune = |constraint: &str, format: &str, plot: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nudge-sim"));
        cmd.arg("tune")
            .arg(root.join("scenarios/push_send.toml"))
            .args([
                "-w",
                "opened=1",
                "-w",
                "unsubscribed=0..-20",
                "--steps",
                "3",
            ])
            .args(["--horizon", "2000", "--subject-to", constraint])
            .args(["--format", format]);
        if let Some(p) = plot {
            cmd.arg("--plot").arg(p);
        }
        cmd.output().unwrap()
    };
    let plain = tune("opened >= 0", "json", None);
    let t: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    let rate = |i: usize| {
        t["settings"][i]["outcomes"]["unsubscribed"]
            .as_f64()
            .unwrap()
    };
    let bound = 0.5 * (rate(0) + rate(2));
    let plot = dir.path().join("t.svg");
    let out = tune(&format!("unsubscribed<={bound}"), "json", Some(&plot));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_constrained(&c, "unsubscribed", bound);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("(best feasible)") && svg.contains(&format!("unsubscribed &lt;= {bound}"))
    );

    let none = tune("unsubscribed <= 0", "table", None);
    assert!(none.status.success());
    let text = String::from_utf8(none.stdout).unwrap();
    assert!(
        text.contains("no setting meets unsubscribed <= 0"),
        "{text}"
    );
    let bad = tune("unsubscribed = 0.1", "table", None);
    assert!(!bad.status.success());
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("expected `SIGNAL <= VALUE`"), "{err}");
}

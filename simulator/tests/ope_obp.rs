//! `nudge-sim evaluate` agrees with the Open Bandit Pipeline: every
//! expected number here was computed by obp 0.5.7 (and scikit-learn, for
//! fitted reward models) by `fixtures/obp/make_fixtures.py` on the same
//! input files.

use clap::Parser;
use nudge_sim::ope::{self, Args, EstimateOptions, Estimator, OpeData, Outcome};
use serde_json::Value;
use std::path::PathBuf;

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
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn evaluate(args: &[&str]) -> Outcome {
    let cli = Cli::try_parse_from(std::iter::once("evaluate").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    ope::run(&cli.args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Asserts |ours − obp| ≤ tol · max(1, |obp|) for every estimator obp computed.
fn assert_agrees(outcome: &Outcome, want: &Value, tol: f64) {
    let (_, ev) = &outcome.candidates[0];
    let want = want.as_object().unwrap();
    let mut checked = 0;
    for (name, value) in want {
        let Some(v) = value.as_f64() else { continue };
        let ours = ev
            .estimates
            .iter()
            .find(|e| e.name == *name)
            .unwrap_or_else(|| panic!("no estimate {name}"));
        let err = (ours.value - v).abs();
        assert!(
            err <= tol * v.abs().max(1.0),
            "{name}: ours {} vs obp {v} (difference {err:e})",
            ours.value
        );
        checked += 1;
    }
    assert!(checked >= 2, "the fixture has estimates");
}

const ALL_BUT_REPLAY: &str = "ipw,snipw,dm,dr,sndr,switch-dr,dros";

#[test]
fn every_estimator_matches_obp_on_a_jsonl_log_with_a_stochastic_candidate() {
    let exp = expected();
    let out = evaluate(&[
        "--log",
        &fixture("synthetic.jsonl"),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        ALL_BUT_REPLAY,
        "--switch-tau",
        "2",
        "--dros-lambda",
        "5",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.candidates[0].1.n, 400);
    assert_agrees(&out, &exp["synthetic"]["soft"], 1e-10);
}

#[test]
fn every_estimator_and_replay_match_obp_on_an_obd_csv_with_a_deterministic_candidate() {
    let exp = expected();
    let out = evaluate(&[
        "--log",
        &format!("obd:{}", fixture("synthetic.obd.csv")),
        "--target-probs",
        &fixture("synthetic_target_greedy.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "replay,ipw,snipw,dm,dr,sndr,switch-dr,dros",
        "--switch-tau",
        "2",
        "--dros-lambda",
        "5",
        "--bootstrap",
        "0",
    ]);
    assert_agrees(&out, &exp["synthetic"]["greedy"], 1e-10);
}

#[test]
fn the_open_bandit_dataset_sample_with_positions_matches_obp() {
    let exp = expected();
    for (target, key, estimators) in [
        ("obd_target_soft.csv", "soft", "ipw,snipw"),
        ("obd_target_greedy.csv", "greedy", "replay,ipw,snipw"),
    ] {
        let out = evaluate(&[
            "--log",
            &format!("obd:{}", fixture("obd_men_head.csv")),
            "--target-probs",
            &fixture(target),
            "--estimators",
            estimators,
            "--bootstrap",
            "0",
        ]);
        assert_eq!(out.candidates[0].1.n, exp["obd"]["n"].as_u64().unwrap());
        assert_agrees(&out, &exp["obd"][key], 1e-10);
    }
}

#[test]
fn a_cross_fitted_ridge_reward_model_matches_scikit_learn_and_obp() {
    let exp = expected();
    let out = evaluate(&[
        "--log",
        &format!("obd:{}", fixture("synthetic.obd.csv")),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--fit-reward-model",
        "ridge",
        "--folds",
        "2",
        "--reg",
        "1",
        "--estimators",
        ALL_BUT_REPLAY,
        "--switch-tau",
        "2",
        "--dros-lambda",
        "5",
        "--bootstrap",
        "0",
    ]);
    // A linear solve of our own against scikit-learn's: a little looser.
    assert_agrees(&out, &exp["synthetic"]["fitted"]["ridge"], 1e-9);
}

#[test]
fn a_cross_fitted_logistic_reward_model_matches_scikit_learn_and_obp() {
    let exp = expected();
    let out = evaluate(&[
        "--log",
        &format!("obd:{}", fixture("synthetic.obd.csv")),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--fit-reward-model",
        "logistic",
        "--folds",
        "2",
        "--reg",
        "1",
        "--estimators",
        ALL_BUT_REPLAY,
        "--switch-tau",
        "2",
        "--dros-lambda",
        "5",
        "--bootstrap",
        "0",
    ]);
    // Newton's method here runs to a gradient norm of 1e-10; scikit-learn's
    // lbfgs stops earlier on its own relative-objective criterion (even with
    // tol=1e-12), leaving differences of a few 1e-6 in q̂.
    assert_agrees(&out, &exp["synthetic"]["fitted"]["logistic"], 2e-5);
}

/// Reads an `event_id,action,value` fixture into an n × k matrix.
fn matrix(name: &str, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![f64::NAN; n * k];
    let mut r = csv::Reader::from_path(fixture(name)).unwrap();
    for row in r.records() {
        let row = row.unwrap();
        let i: usize = row[0].parse().unwrap();
        let a: usize = row[1].parse().unwrap();
        out[i * k + a] = row[2].parse().unwrap();
    }
    out
}

#[test]
fn the_in_memory_api_matches_obp() {
    let exp = expected();
    let (n, k) = (400, 4);
    let mut data = OpeData {
        n_actions: k,
        target: matrix("synthetic_target_soft.csv", n, k),
        q_hat: Some(matrix("synthetic_reward_model.csv", n, k)),
        ..OpeData::default()
    };
    let mut r = csv::Reader::from_path(fixture("synthetic.obd.csv")).unwrap();
    for row in r.records() {
        let row = row.unwrap();
        data.action.push(row[1].parse().unwrap());
        data.reward.push(row[2].parse().unwrap());
        data.pscore.push(row[3].parse().unwrap());
    }
    let opts = EstimateOptions {
        switch_tau: 2.0,
        dros_lambda: 5.0,
        ..EstimateOptions::default()
    };
    let which = [
        Estimator::Ipw,
        Estimator::Snipw,
        Estimator::Dm,
        Estimator::Dr,
        Estimator::Sndr,
        Estimator::SwitchDr,
        Estimator::Dros,
    ];
    let est = ope::estimate(&data, &which, &opts).unwrap();
    for e in &est {
        let want = exp["synthetic"]["soft"][&e.name].as_f64().unwrap();
        assert!(
            (e.value - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{}: {} vs {want}",
            e.name,
            e.value
        );
        // Without a bootstrap the interval is value ± 1.96 stderr.
        assert!(e.stderr > 0.0 && e.bootstrap_ci.is_none());
        let half = 1.959963984540054 * e.stderr;
        assert!((e.ci_high - e.value - half).abs() < 1e-12);
        assert!((e.value - e.ci_low - half).abs() < 1e-12);
    }
}

#[test]
fn the_standard_error_is_the_sample_deviation_of_the_contributions_over_root_n() {
    // IPW's contributions w·r for a tiny log, computed by hand.
    let data = OpeData {
        n_actions: 2,
        action: vec![0, 1, 0],
        reward: vec![1.0, 1.0, 0.0],
        pscore: vec![0.5, 0.25, 0.5],
        target: vec![1.0, 0.0, 0.5, 0.5, 0.2, 0.8],
        q_hat: None,
    };
    // w = [2, 2, 0.4]; w·r = [2, 2, 0]; mean 4/3; sample var = 4/3.
    let e = ope::estimate(&data, &[Estimator::Ipw], &EstimateOptions::default()).unwrap();
    assert!((e[0].value - 4.0 / 3.0).abs() < 1e-15);
    assert!((e[0].stderr - (4.0f64 / 3.0 / 3.0).sqrt()).abs() < 1e-15);
}

/// Slates: from each slate's two softmax distributions and its logged
/// items, Nudge's per-position probabilities (conditionals multiplied down
/// the slate, exact item-position marginals) equal obp's pscore,
/// pscore_item_position and pscore_cascade, and SIPS, IIPS and RIPS equal
/// obp's estimates (`fixtures/obp/make_slate_fixtures.py`).
#[test]
fn slate_estimators_agree_with_obp() {
    use nudge_sim::ope::slate::{SlateEstimator, estimate, from_draws};
    let text = std::fs::read_to_string(fixture("slate.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let close = |a: f64, b: f64, tol: f64, what: &str| {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-300),
            "{what}: {a} vs obp {b}"
        );
    };
    let mut slates = Vec::new();
    for (t, s) in fx["slates"].as_array().unwrap().iter().enumerate() {
        let items: Vec<usize> = s["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let positions = from_draws(
            &floats(&s["rewards"]),
            &items,
            &floats(&s["b"]),
            &floats(&s["e"]),
        )
        .expect("6 candidates");
        for (k, p) in positions.iter().enumerate() {
            let obp = &s["obp"];
            for (ours, key) in [
                (p.b_slate, "b_slate"),
                (p.b_item, "b_item"),
                (p.b_prefix, "b_prefix"),
                (p.e_slate, "e_slate"),
                (p.e_item, "e_item"),
                (p.e_prefix, "e_prefix"),
            ] {
                close(
                    ours,
                    floats(&obp[key])[k],
                    1e-12,
                    &format!("slate {t} position {k} {key}"),
                );
            }
        }
        slates.push(positions);
    }
    assert_eq!(slates.len(), 300);
    let est = estimate(&slates, &SlateEstimator::ALL, 0.05);
    for e in &est {
        let want = fx["expected"][&e.name].as_f64().unwrap();
        close(e.value, want, 1e-9, &e.name);
        assert!(e.stderr > 0.0 && e.ci_low < e.value && e.value < e.ci_high);
    }
    eprintln!(
        "slates vs obp: {}",
        est.iter()
            .map(|e| format!("{} {:.12}", e.name, e.value))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// MIPS with the true, stochastic `p(e|a)`: obp's exact marginal weights
/// (`fixtures/obp/make_embed_fixtures.py`).
#[test]
fn mips_with_stochastic_embeddings_agrees_with_obp() {
    use nudge_sim::ope::embed::marginal_weight;
    let text = std::fs::read_to_string(fixture("embed.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let p_e_a: Vec<Vec<Vec<f64>>> = serde_json::from_value(fx["p_e_a"].clone()).unwrap();
    let events = fx["events"].as_array().unwrap();
    let mut sum = 0.0;
    for ev in events {
        let b: Vec<f64> = serde_json::from_value(ev["b"].clone()).unwrap();
        let e: Vec<f64> = serde_json::from_value(ev["e"].clone()).unwrap();
        let embed: Vec<usize> = serde_json::from_value(ev["embed"].clone()).unwrap();
        // p(e_i | a) = Π_d p(e_{i,d} | a), as obp takes it.
        let p_e: Vec<f64> = (0..b.len())
            .map(|a| {
                embed
                    .iter()
                    .enumerate()
                    .map(|(d, &c)| p_e_a[a][c][d])
                    .product()
            })
            .collect();
        sum += marginal_weight(&b, &e, &p_e) * ev["reward"].as_f64().unwrap();
    }
    let ours = sum / events.len() as f64;
    let want = fx["expected"]["mipw"].as_f64().unwrap();
    assert!(
        (ours - want).abs() <= 1e-9 * want.abs(),
        "mipw {ours} vs obp {want}"
    );
}

use super::*;
use crate::features::FeatureValue;
use std::path::Path;

type Features = Vec<(String, FeatureValue)>;

const DISJOINT: &str = r#"
id = "t"
algorithm = "linucb"
arms = ["a", "b", "c"]
[params]
alpha = 1.0
epsilon = 0.1
[[features.context]]
name = "u"
type = "vector"
length = 3
"#;

const SHARED: &str = r#"
id = "s"
algorithm = "lin_ts"
mode = "shared"
[params]
v = 0.5
draws = 500
[[features.context]]
name = "u"
type = "vector"
length = 2
[[features.action]]
name = "i"
type = "vector"
length = 2
[[features.interactions]]
context = "u"
action = "i"
"#;

fn policy(text: &str) -> Policy {
    Policy::new(parse_policy(text, Path::new("test.toml")).unwrap())
}

fn with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replacen(from, to, 1)
}

fn errors(text: &str) -> Vec<PolicyError> {
    parse_policy(text, Path::new("bad.toml")).unwrap_err()
}

fn feats(pairs: &[(&str, FeatureValue)]) -> Features {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn the_shipped_example_policies_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let (specs, errs) = load_paths(&[dir]);
    assert!(errs.is_empty(), "{errs:?}");
    let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    assert!(
        ids.contains(&"push_send") && ids.contains(&"discovery_ranking"),
        "{ids:?}"
    );
    let push = specs.iter().find(|s| s.id == "push_send").unwrap();
    assert_eq!(push.arms, ["send_now", "send_later", "skip"]);
    assert!(
        specs
            .iter()
            .any(|s| s.mode == Mode::Shared && !s.features.interactions().is_empty())
    );
}

#[test]
fn each_invalid_policy_is_refused_naming_the_key_and_the_expectation() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            with(DISJOINT, "alpha = 1.0", "alpha = -0.5"),
            "params.alpha",
            ">= 0",
        ),
        (
            with(DISJOINT, "epsilon = 0.1", "epsilon = 1.5"),
            "params.epsilon",
            "[0, 1]",
        ),
        (
            with(DISJOINT, "epsilon = 0.1", "lambda = 0.0"),
            "params.lambda",
            "> 0",
        ),
        (
            with(DISJOINT, "\"linucb\"", "\"linucbb\""),
            "algorithm",
            "expected one of",
        ),
        (
            with(DISJOINT, "\"c\"]", "\"a\"]"),
            "arms[2]",
            "duplicate arm",
        ),
        (
            with(DISJOINT, "[\"a\", \"b\", \"c\"]", "[]"),
            "arms",
            "non-empty",
        ),
        (
            with(DISJOINT, "\"t\"", "\"has space\""),
            "id",
            "[A-Za-z0-9_.-]",
        ),
        (
            with(DISJOINT, "length = 3", "length = 0"),
            "features.context[0].length",
            "[1, 1024]",
        ),
        (
            with(DISJOINT, "length = 3", "length = 3\ndefault = [1.0]"),
            "features.context[0].default",
            "length 3",
        ),
        (
            with(DISJOINT, "alpha = 1.0", "alpha = 1.0\nv = 0.2"),
            "params.v",
            "not a parameter",
        ),
        (
            with(DISJOINT, "alpha = 1.0", "alpha = 1.0\ndraws = 10"),
            "params.draws",
            "Monte Carlo",
        ),
        (
            with(DISJOINT, "alpha = 1.0", "alpha = 1.0\nbeta = 2"),
            "params.beta",
            "unknown field",
        ),
        (
            with(DISJOINT, "type = \"vector\"", "type = \"tensor\""),
            "features.context.type",
            "unknown variant",
        ),
        (
            format!("{DISJOINT}[reward]\nwindow = \"0s\"\n"),
            "reward.window",
            "positive duration",
        ),
        (
            format!("{DISJOINT}[reward]\nmin = 1.0\nmax = 0.0\n"),
            "reward.max",
            "max > min",
        ),
        (
            format!("{DISJOINT}[reward]\ndefault = 5.0\nmax = 1.0\n"),
            "reward.default",
            "range",
        ),
        (
            with(
                SHARED,
                "mode = \"shared\"",
                "mode = \"shared\"\narms = [\"x\"]",
            ),
            "arms",
            "remove",
        ),
        (
            with(SHARED, "action = \"i\"", "action = \"nope\""),
            "features",
            "unknown action feature",
        ),
        (
            with(DISJOINT, "\"linucb\"", "\"beta_ts\""),
            "params.alpha",
            "not a parameter",
        ),
        (
            with(SHARED, "\"lin_ts\"", "\"beta_ts\""),
            "mode",
            "disjoint",
        ),
        (
            with(
                DISJOINT,
                "length = 3",
                "length = 3\n[[features.action]]\nname = \"x\"\ntype = \"number\"",
            ),
            "features.action",
            "shared",
        ),
    ];
    for (text, key, expected) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|e| e.key == key && e.message.contains(expected)),
            "expected an error at `{key}` containing {expected:?}, got {errs:?}"
        );
        assert!(errs.iter().all(|e| e.file == Path::new("bad.toml")));
    }
}

#[test]
fn every_error_of_a_file_is_reported_not_just_the_first() {
    let text = with(
        &with(DISJOINT, "alpha = 1.0", "alpha = -1.0"),
        "epsilon = 0.1",
        "epsilon = 7",
    );
    let keys: Vec<String> = errors(&text).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["params.alpha", "params.epsilon"]);
}

#[test]
fn the_same_event_id_reproduces_the_same_decision() {
    let p = policy(DISJOINT);
    let model = p.new_model();
    let ctx = feats(&[("u", vec![0.1, 0.2, 0.3].into())]);
    let first = p
        .decide(&model, &DecideRequest::disjoint("evt-1", &ctx))
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            p.decide(&model, &DecideRequest::disjoint("evt-1", &ctx))
                .unwrap(),
            first
        );
    }
    let chosen: std::collections::HashSet<usize> = (0..200)
        .map(|i| {
            let id = format!("evt-{i}");
            p.decide(&model, &DecideRequest::disjoint(&id, &ctx))
                .unwrap()
                .chosen()
        })
        .collect();
    assert_eq!(
        chosen.len(),
        3,
        "a fresh model with ties explores every arm"
    );
}

#[test]
fn linucb_scores_follow_li_et_al_and_the_best_arm_gets_the_greedy_mass() {
    let p = policy(DISJOINT);
    let mut model = p.new_model();
    let x = [1.0, 0.5, -0.5, 0.25];
    // Arm 1 has paid well, arm 0 badly, arm 2 is unexplored.
    for _ in 0..30 {
        model.observe(0, &x, 0.0).unwrap();
        model.observe(1, &x, 1.0).unwrap();
    }
    let ctx = feats(&[("u", vec![0.5, -0.5, 0.25].into())]);
    let d = p
        .decide(&model, &DecideRequest::disjoint("e", &ctx))
        .unwrap();
    let ucb: Vec<f64> = (0..3)
        .map(|a| model.mean(a, &x) + 1.0 * model.quad_form(a, &x).sqrt())
        .collect();
    let best = (0..3).max_by(|a, b| ucb[*a].total_cmp(&ucb[*b])).unwrap();
    for a in 0..3 {
        let expected = if a == best {
            0.9 + 0.1 / 3.0
        } else {
            0.1 / 3.0
        };
        assert!(
            (d.probabilities[a] - expected).abs() < 1e-12,
            "{:?} ucb {ucb:?}",
            d.probabilities
        );
    }
    // The unexplored arm's width (√(1/λ·|x|²) = 1.3) beats arm 1's mean.
    assert_eq!(best, 2);
}

#[test]
fn zero_epsilon_linucb_logs_probability_one() {
    let p = policy(&with(DISJOINT, "epsilon = 0.1", "epsilon = 0.0"));
    let model = p.new_model();
    let ctx = feats(&[("u", vec![1.0, 0.0, 0.0].into())]);
    let d = p
        .decide(&model, &DecideRequest::disjoint("e", &ctx))
        .unwrap();
    assert_eq!(
        d.probabilities,
        vec![1.0, 0.0, 0.0],
        "all tie: lowest index"
    );
    assert_eq!(d.propensity(), 1.0);
}

#[test]
fn excluded_arms_are_never_candidates() {
    let p = policy(DISJOINT);
    let model = p.new_model();
    let ctx = feats(&[("u", vec![0.0; 3].into())]);
    let excluded = vec!["b".to_string()];
    for i in 0..100 {
        let id = i.to_string();
        let req = DecideRequest {
            excluded: &excluded,
            ..DecideRequest::disjoint(&id, &ctx)
        };
        let d = p.decide(&model, &req).unwrap();
        assert_eq!(d.candidates, vec![0, 2]);
        assert_ne!(d.candidates[d.chosen()], 1);
        assert!((d.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn bad_requests_are_errors_that_name_the_field() {
    let p = policy(DISJOINT);
    let model = p.new_model();
    let ctx = feats(&[("u", vec![0.0; 3].into())]);
    let short = feats(&[("u", vec![0.0; 2].into())]);
    let action = vec![Candidate {
        id: "x".to_string(),
        features: feats(&[]),
    }];
    let all = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let unknown = vec!["zz".to_string()];
    let base = DecideRequest::disjoint("e", &ctx);
    let cases = [
        (
            DecideRequest {
                context: &short,
                ..base
            },
            "context.u",
        ),
        (
            DecideRequest {
                actions: &action,
                ..base
            },
            "actions",
        ),
        (
            DecideRequest {
                excluded: &all,
                ..base
            },
            "actions",
        ),
        (
            DecideRequest {
                excluded: &unknown,
                ..base
            },
            "excluded",
        ),
        (DecideRequest { k: 0, ..base }, "k"),
        (DecideRequest { k: 4, ..base }, "k"),
    ];
    for (req, field) in cases {
        let err = p.decide(&model, &req).unwrap_err();
        assert_eq!(err.field().as_deref(), Some(field), "{err}");
    }
}

fn items(n: usize) -> Vec<Candidate<Features>> {
    (0..n)
        .map(|i| Candidate {
            id: format!("item{i}"),
            features: feats(&[("i", vec![(i as f64).sin(), (i as f64).cos()].into())]),
        })
        .collect()
}

#[test]
fn shared_mode_ranks_a_slate_of_distinct_candidates() {
    let p = policy(SHARED);
    let model = p.new_model();
    let ctx = feats(&[("u", vec![0.3, -0.7].into())]);
    let actions = items(6);
    let req = DecideRequest {
        event_id: "e",
        context: &ctx,
        actions: &actions,
        excluded: &[],
        k: 3,
    };
    let d = p.decide(&model, &req).unwrap();
    assert_eq!(d.slate.len(), 3);
    assert_eq!(d.candidates, (0..6).collect::<Vec<_>>());
    let mut ids: Vec<usize> = d.slate.iter().map(|s| s.index).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!((d.slate[0].probability - d.propensity()).abs() < 1e-15);
    assert!(d.probabilities.iter().all(|q| *q >= 0.05 / 6.0 - 1e-15));
    // Row i of the vectors is [bias, u, i, u ⊗ i].
    let v = d.vector(2);
    assert_eq!(v.len(), 1 + 2 + 2 + 4);
    assert_eq!(v[3], 2.0f64.sin());
    assert!((v[5] - 0.3 * 2.0f64.sin()).abs() < 1e-15);
}

#[test]
fn shared_mode_refuses_duplicate_and_missing_candidates() {
    let p = policy(SHARED);
    let model = p.new_model();
    let ctx = feats(&[("u", vec![0.3, -0.7].into())]);
    let mut dup = items(3);
    dup[2].id = "item0".into();
    let req = DecideRequest {
        event_id: "e",
        context: &ctx,
        actions: &dup,
        excluded: &[],
        k: 1,
    };
    assert_eq!(
        p.decide(&model, &req).unwrap_err(),
        DecideError::DuplicateAction("item0".into())
    );
    let none: Vec<Candidate<Features>> = vec![];
    let req = DecideRequest {
        actions: &none,
        ..req
    };
    assert_eq!(
        p.decide(&model, &req).unwrap_err(),
        DecideError::NoCandidates
    );
    let mut nan = items(2);
    nan[1].features = feats(&[("i", vec![f64::NAN, 0.0].into())]);
    let req = DecideRequest {
        actions: &nan,
        ..req
    };
    let err = p.decide(&model, &req).unwrap_err();
    assert_eq!(err.field().as_deref(), Some("actions[1].features.i"));
}

#[test]
fn learning_checks_the_reward_range_and_leaves_the_model_alone_on_error() {
    let p = policy(&format!("{DISJOINT}[reward]\nmin = 0.0\nmax = 1.0\n"));
    let mut model = p.new_model();
    let ctx = feats(&[("u", vec![0.1, 0.2, 0.3].into())]);
    let d = p
        .decide(&model, &DecideRequest::disjoint("e", &ctx))
        .unwrap();
    for bad in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        assert!(p.learn(&mut model, &d, d.chosen(), bad).is_err(), "{bad}");
    }
    assert_eq!(model.version(), 0);
    p.learn(&mut model, &d, d.chosen(), 1.0).unwrap();
    let arm = d.candidates[d.chosen()];
    assert_eq!(model.stats(arm).count, 1);
    assert_eq!(model.stats(arm).xr[0], 1.0, "bias slot times reward");
}

#[test]
fn reward_functions_weigh_named_signals() {
    let p = policy(&format!(
        "{DISJOINT}[reward]\nsignals = {{ opened = 1.0, unsubscribed = -5.0 }}\nmin = -5.0\nmax = 1.0\n"
    ));
    let r = &p.spec().reward;
    assert_eq!(r.from_signals([("opened", 1.0)]), Ok(1.0));
    assert_eq!(
        r.from_signals([("opened", 1.0), ("unsubscribed", 1.0)]),
        Ok(-4.0)
    );
    assert_eq!(r.from_signals([]), Ok(0.0));
    assert_eq!(
        r.from_signals([("clicked", 1.0)]),
        Err(RewardError::UnknownSignal("clicked".into()))
    );
    assert!(matches!(
        r.from_signals([("opened", 3.0)]),
        Err(RewardError::OutOfRange { .. })
    ));
}

#[test]
fn beta_thompson_sampling_prefers_the_arm_with_more_successes() {
    let text = r#"
id = "b"
algorithm = "beta_ts"
arms = ["x", "y"]
[params]
epsilon = 0.0
draws = 4000
"#;
    let p = policy(text);
    let mut model = p.new_model();
    for _ in 0..20 {
        model.observe(0, &[1.0], 1.0).unwrap();
        model.observe(1, &[1.0], 0.0).unwrap();
    }
    let ctx = feats(&[]);
    let d = p
        .decide(&model, &DecideRequest::disjoint("e", &ctx))
        .unwrap();
    // Beta(21, 1) vs Beta(1, 21): arm x wins essentially always.
    assert!(d.probabilities[0] > 0.999, "{:?}", d.probabilities);
}

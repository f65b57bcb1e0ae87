use super::*;

fn number(mean: f64, std: f64, default: Option<f64>) -> FeatureKind {
    FeatureKind::Number { mean, std, default }
}

fn one_hot(vocab: &[&str], default: Option<&str>) -> FeatureKind {
    let vocabulary: Vec<String> = vocab.iter().map(|s| s.to_string()).collect();
    let index = vocabulary
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    FeatureKind::OneHot {
        vocabulary,
        index,
        default: default.map(str::to_string),
    }
}

fn ctx(pairs: &[(&str, FeatureValue)]) -> Vec<(String, FeatureValue)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn spec(context: Vec<(&str, FeatureKind)>, unknown: UnknownFeatures) -> FeatureSpec {
    let context = context
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect();
    FeatureSpec::new(true, context, vec![], &[], unknown).unwrap()
}

#[test]
fn numbers_are_standardised_after_the_bias() {
    let s = spec(
        vec![("age", number(30.0, 10.0, None))],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![9.0; s.dim()];
    s.encode_context(&ctx(&[("age", 45.0.into())]), &mut x)
        .unwrap();
    assert_eq!(x, vec![1.0, 1.5]);
}

#[test]
fn booleans_read_as_zero_or_one_in_number_features() {
    let s = spec(
        vec![("opted_in", number(0.0, 1.0, None))],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![0.0; s.dim()];
    s.encode_context(&ctx(&[("opted_in", true.into())]), &mut x)
        .unwrap();
    assert_eq!(x[1], 1.0);
}

#[test]
fn one_hot_puts_values_outside_the_vocabulary_in_the_other_slot() {
    let s = spec(
        vec![("os", one_hot(&["ios", "android"], None))],
        UnknownFeatures::Ignore,
    );
    assert_eq!(s.dim(), 4);
    let mut x = vec![7.0; 4];
    s.encode_context(&ctx(&[("os", "android".into())]), &mut x)
        .unwrap();
    assert_eq!(x, vec![1.0, 0.0, 1.0, 0.0]);
    s.encode_context(&ctx(&[("os", "symbian".into())]), &mut x)
        .unwrap();
    assert_eq!(x, vec![1.0, 0.0, 0.0, 1.0]);
}

#[test]
fn hashed_values_set_exactly_one_bucket_deterministically() {
    let kind = FeatureKind::Hashed {
        buckets: 32,
        default: None,
    };
    let s = spec(vec![("country", kind)], UnknownFeatures::Ignore);
    let mut seen = std::collections::HashSet::new();
    for c in ["fr", "de", "us", "jp", "br", "in", "ng", "au"] {
        let mut x = vec![0.0; s.dim()];
        s.encode_context(&ctx(&[("country", c.into())]), &mut x)
            .unwrap();
        assert_eq!(x[1..].iter().sum::<f64>(), 1.0);
        let bucket = x[1..].iter().position(|v| *v == 1.0).unwrap();
        assert_eq!(bucket, hash_bucket(c, 32));
        seen.insert(bucket);
    }
    // Eight values in 32 buckets: a working hash spreads them.
    assert!(seen.len() >= 5, "buckets used: {seen:?}");
}

#[test]
fn missing_optional_features_take_their_default_and_required_ones_fail_by_name() {
    let s = spec(
        vec![
            ("hour", number(12.0, 6.0, Some(18.0))),
            ("os", one_hot(&["ios"], Some("ios"))),
            (
                "emb",
                FeatureKind::Vector {
                    len: 2,
                    default: Some(vec![0.5, -0.5]),
                },
            ),
            ("score", number(0.0, 1.0, None)),
        ],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![0.0; s.dim()];
    s.encode_context(&ctx(&[("score", 2.0.into())]), &mut x)
        .unwrap();
    assert_eq!(x, vec![1.0, 1.0, 1.0, 0.0, 0.5, -0.5, 2.0]);
    let err = s.encode_context(&ctx(&[]), &mut x).unwrap_err();
    assert_eq!(err.feature, "score");
    assert_eq!(err.problem, FeatureProblem::Missing);
    assert_eq!(err.field(), "context.score");
}

#[test]
fn bad_values_are_errors_that_name_the_feature() {
    let s = spec(
        vec![
            ("n", number(0.0, 1.0, Some(0.0))),
            (
                "v",
                FeatureKind::Vector {
                    len: 3,
                    default: Some(vec![0.0; 3]),
                },
            ),
            ("c", one_hot(&["a"], Some("a"))),
        ],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![0.0; s.dim()];
    type Case = (Vec<(String, FeatureValue)>, &'static str, FeatureProblem);
    let cases: Vec<Case> = vec![
        (
            ctx(&[("n", f64::NAN.into())]),
            "n",
            FeatureProblem::NotFinite,
        ),
        (
            ctx(&[("n", f64::INFINITY.into())]),
            "n",
            FeatureProblem::NotFinite,
        ),
        (
            ctx(&[("n", "3".into())]),
            "n",
            FeatureProblem::WrongType {
                expected: "a number",
            },
        ),
        (
            ctx(&[("v", vec![1.0, 2.0].into())]),
            "v",
            FeatureProblem::WrongLength {
                expected: 3,
                got: 2,
            },
        ),
        (
            ctx(&[("v", vec![1.0, f64::NAN, 0.0].into())]),
            "v",
            FeatureProblem::NotFinite,
        ),
        (
            ctx(&[("v", 1.0.into())]),
            "v",
            FeatureProblem::WrongType {
                expected: "an array of numbers",
            },
        ),
        (
            ctx(&[("c", 1.0.into())]),
            "c",
            FeatureProblem::WrongType {
                expected: "a string",
            },
        ),
    ];
    for (input, feature, problem) in cases {
        let err = s.encode_context(&input, &mut x).unwrap_err();
        assert_eq!(
            (err.feature.as_str(), &err.problem),
            (feature, &problem),
            "{input:?}"
        );
    }
}

#[test]
fn unknown_features_are_ignored_or_rejected_as_the_spec_says() {
    let input = ctx(&[("n", 1.0.into()), ("surprise", 2.0.into())]);
    let mut x = vec![0.0; 2];
    let lenient = spec(vec![("n", number(0.0, 1.0, None))], UnknownFeatures::Ignore);
    lenient.encode_context(&input, &mut x).unwrap();
    let strict = spec(vec![("n", number(0.0, 1.0, None))], UnknownFeatures::Reject);
    let err = strict.encode_context(&input, &mut x).unwrap_err();
    assert_eq!(
        (err.feature.as_str(), err.problem),
        ("surprise", FeatureProblem::Unknown)
    );
}

#[test]
fn interactions_are_the_outer_product_of_context_and_action_slots() {
    let s = FeatureSpec::new(
        false,
        vec![(
            "u".into(),
            FeatureKind::Vector {
                len: 2,
                default: None,
            },
        )],
        vec![(
            "i".into(),
            FeatureKind::Vector {
                len: 3,
                default: None,
            },
        )],
        &[("u".into(), "i".into())],
        UnknownFeatures::Ignore,
    )
    .unwrap();
    assert_eq!((s.context_dim(), s.dim()), (2, 2 + 3 + 6));
    let mut x = vec![0.0; s.dim()];
    s.encode_context(&ctx(&[("u", vec![2.0, 3.0].into())]), &mut x)
        .unwrap();
    let action = ctx(&[("i", vec![1.0, 10.0, 100.0].into())]);
    s.encode_action(&action, 4, &mut x).unwrap();
    assert_eq!(
        x,
        vec![
            2.0, 3.0, 1.0, 10.0, 100.0, 2.0, 20.0, 200.0, 3.0, 30.0, 300.0
        ]
    );
    let err = s
        .encode_action(&ctx(&[("i", vec![1.0].into())]), 4, &mut x)
        .unwrap_err();
    assert_eq!(err.field(), "actions[4].features.i");
}

#[test]
fn layout_refuses_duplicate_names_and_unknown_interaction_features() {
    let n = || number(0.0, 1.0, None);
    let dup = FeatureSpec::new(
        true,
        vec![("a".into(), n()), ("a".into(), n())],
        vec![],
        &[],
        UnknownFeatures::Ignore,
    );
    assert!(dup.unwrap_err().0.contains("duplicate context feature `a`"));
    let bad = FeatureSpec::new(
        true,
        vec![("a".into(), n())],
        vec![("b".into(), n())],
        &[("a".into(), "zz".into())],
        UnknownFeatures::Ignore,
    );
    assert!(bad.unwrap_err().0.contains("unknown action feature `zz`"));
}

#[test]
fn features_sent_out_of_spec_order_are_found_all_the_same() {
    let s = spec(
        vec![
            ("a", number(0.0, 1.0, None)),
            ("b", number(0.0, 1.0, None)),
            ("c", number(0.0, 1.0, None)),
        ],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![0.0; s.dim()];
    let shuffled = ctx(&[
        ("c", 3.0.into()),
        ("extra", 9.0.into()),
        ("a", 1.0.into()),
        ("b", 2.0.into()),
    ]);
    s.encode_context(&shuffled, &mut x).unwrap();
    assert_eq!(x, vec![1.0, 1.0, 2.0, 3.0]);
}

#[test]
fn values_whose_square_would_overflow_are_refused_even_when_finite() {
    let s = spec(
        vec![
            ("n", number(0.0, 1e-300, None)),
            (
                "v",
                FeatureKind::Vector {
                    len: 2,
                    default: None,
                },
            ),
        ],
        UnknownFeatures::Ignore,
    );
    let mut x = vec![0.0; s.dim()];
    let ok = ctx(&[("n", 0.0.into()), ("v", vec![1e9, -1e9].into())]);
    s.encode_context(&ok, &mut x).unwrap();
    type Case = (Vec<(String, FeatureValue)>, &'static str, FeatureProblem);
    let cases: Vec<Case> = vec![
        // 1e10 / 1e-300 overflows to infinity while standardising.
        (
            ctx(&[("n", 1e10.into()), ("v", vec![0.0, 0.0].into())]),
            "n",
            FeatureProblem::TooLarge,
        ),
        (
            ctx(&[("n", 0.0.into()), ("v", vec![0.0, 1e200].into())]),
            "v",
            FeatureProblem::TooLarge,
        ),
        (
            ctx(&[("n", 0.0.into()), ("v", vec![1e200, f64::NAN].into())]),
            "v",
            FeatureProblem::NotFinite,
        ),
    ];
    for (input, feature, problem) in cases {
        let err = s.encode_context(&input, &mut x).unwrap_err();
        assert_eq!((err.feature.as_str(), err.problem), (feature, problem));
    }
}

//! Fuzzing the decoders of untrusted bytes that live outside the HTTP API:
//! policy files (TOML from disk) and model-state blobs (from Redis, or a
//! snapshot file). Arbitrary bytes and mutations of valid inputs must give
//! an error, never a panic, never a spec or state that breaks the maths, and
//! never a huge allocation (a length field claiming 2⁶⁰ entries must be
//! refused before anything is allocated).
//!
//! Seeds are fixed: every run generates the same cases.

mod support;

use nudge::model::codec::{self, CodecError};
use nudge::model::{ArmStats, LinearModel, ModelState};
use nudge::policy::spec::{MAX_DIM, MAX_MODEL_ENTRIES, MAX_WINDOW};
use nudge::policy::{Mode, Policy, parse_policy};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, remembering the largest single allocation, so a
/// test can prove a decoder never asked for a huge buffer.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// No input in this file legitimately needs more than this in one piece
/// (the largest valid blobs generated are a few KiB; policy texts too).
const ALLOCATION_CEILING: usize = 64 << 20;

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

fn assert_no_huge_allocation() {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < ALLOCATION_CEILING,
        "an allocation of {largest} bytes happened"
    );
}

// ---- model-state blobs ------------------------------------------------------

/// A valid state of `arms` arms of dimension `dim`, with statistics built
/// from real observations (so `Σxxᵀ` is positive semi-definite).
fn valid_state(dim: usize, arms: usize, seed: u64) -> ModelState {
    let mut state = ModelState::new(dim, arms);
    state.version = seed;
    let mut v = seed as f64;
    for (a, stats) in state.arms.iter_mut().enumerate() {
        for n in 0..(a + 2) {
            let x: Vec<f64> = (0..dim)
                .map(|i| {
                    v = (v * 1.618_033 + 0.5 + i as f64).fract();
                    v - 0.5
                })
                .collect();
            stats.add(&x, n as f64 * 0.25 - 0.5);
        }
    }
    state
}

/// A blob whose CRC is fixed up after `edit`, so the edit reaches the checks
/// behind the checksum.
fn with_valid_crc(mut blob: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    blob.truncate(blob.len() - 4);
    edit(&mut blob);
    let crc = crc32fast::hash(&blob);
    blob.extend_from_slice(&crc.to_le_bytes());
    blob
}

/// Whatever `decode` returns for `blob`, it must not panic; if it accepts,
/// the state must be usable by the model (finite, positive definite).
fn decode_checked(blob: &[u8]) -> Result<ModelState, CodecError> {
    let decoded = codec::decode(blob);
    if let Ok(state) = &decoded {
        for arm in &state.arms {
            assert!(arm.is_finite(), "decode accepted non-finite statistics");
        }
        // A corrupt but finite Σxxᵀ (not positive semi-definite) is the
        // model's to refuse; it must refuse, not panic.
        let _ = LinearModel::from_state(state.clone(), 1.0, 10);
    }
    decoded
}

fn state_shape() -> impl Strategy<Value = (usize, usize, u64)> {
    (0usize..6, 1usize..4, any::<u64>())
}

proptest! {
    #![proptest_config(config(3000, 11))]

    #[test]
    fn arbitrary_bytes_never_decode_into_a_model(bytes in vec(any::<u8>(), 0..400)) {
        // Random bytes almost never carry the magic and a matching CRC.
        prop_assert!(decode_checked(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        dim in 0u32..8,
        arms in 0u32..4,
        body in vec(any::<u8>(), 0..600),
        fix_crc in any::<bool>(),
    ) {
        let mut blob = b"NDGM".to_vec();
        blob.extend_from_slice(&1u16.to_le_bytes());
        blob.extend_from_slice(&0u16.to_le_bytes());
        blob.extend_from_slice(&dim.to_le_bytes());
        blob.extend_from_slice(&arms.to_le_bytes());
        blob.extend_from_slice(&body);
        if fix_crc {
            let crc = crc32fast::hash(&blob);
            blob.extend_from_slice(&crc.to_le_bytes());
        }
        let _ = decode_checked(&blob);
    }

    #[test]
    fn a_valid_blob_round_trips((dim, arms, seed) in state_shape()) {
        let state = valid_state(dim, arms, seed);
        prop_assert_eq!(decode_checked(&codec::encode(&state)).unwrap(), state);
    }

    #[test]
    fn a_truncated_or_extended_blob_is_refused(
        (dim, arms, seed) in state_shape(),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 1..16),
    ) {
        let blob = codec::encode(&valid_state(dim, arms, seed));
        let short = &blob[..cut.index(blob.len())];
        prop_assert!(decode_checked(short).is_err());
        let mut long = blob.clone();
        long.extend_from_slice(&extra);
        prop_assert!(decode_checked(&long).is_err());
    }

    #[test]
    fn a_flipped_bit_is_refused_by_the_checksum(
        (dim, arms, seed) in state_shape(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut blob = codec::encode(&valid_state(dim, arms, seed));
        let i = at.index(blob.len());
        blob[i] ^= 1 << bit;
        prop_assert!(decode_checked(&blob).is_err());
    }

    #[test]
    fn corrupt_numbers_behind_a_valid_checksum_are_refused_or_harmless(
        (dim, arms, seed) in state_shape(),
        at in any::<prop::sample::Index>(),
        value in prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-1.0),
            Just(f64::MAX),
            Just(-0.0),
            Just(f64::MIN_POSITIVE / 2.0),
            any::<f64>(),
        ],
    ) {
        let blob = codec::encode(&valid_state(dim, arms, seed));
        // Overwrite one 8-byte word after the header (counts, sums, xr, xx).
        let words = (blob.len() - 4 - 24) / 8;
        prop_assume!(words > 0);
        let start = 24 + 8 * at.index(words);
        let blob = with_valid_crc(blob, |b| {
            b[start..start + 8].copy_from_slice(&value.to_le_bytes());
        });
        match decode_checked(&blob) {
            Ok(state) => prop_assert!(state.arms.iter().all(ArmStats::is_finite)),
            Err(CodecError::InvalidValue { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn header_fields_claiming_huge_shapes_are_refused_before_allocating(
        (dim, arms, seed) in state_shape(),
        claimed_dim in prop_oneof![Just(u32::MAX), Just(1u32 << 31), Just(4097u32), Just(4096u32), any::<u32>()],
        claimed_arms in prop_oneof![Just(u32::MAX), Just(1u32 << 16), Just(65_537u32), any::<u32>()],
        format in prop_oneof![Just(1u16), any::<u16>()],
    ) {
        let blob = codec::encode(&valid_state(dim, arms, seed));
        let blob = with_valid_crc(blob, |b| {
            b[4..6].copy_from_slice(&format.to_le_bytes());
            b[8..12].copy_from_slice(&claimed_dim.to_le_bytes());
            b[12..16].copy_from_slice(&claimed_arms.to_le_bytes());
        });
        let same_shape = format == 1 && claimed_dim as usize == dim && claimed_arms as usize == arms;
        prop_assert_eq!(decode_checked(&blob).is_ok(), same_shape);
        assert_no_huge_allocation();
    }
}

#[test]
fn the_largest_shapes_a_header_may_claim_are_refused_without_allocating() {
    let blob = codec::encode(&valid_state(2, 1, 3));
    for (dim, arms) in [
        (4096u32, 65_536u32),
        (u32::MAX, u32::MAX),
        (4096, 1),
        (1, 65_536),
    ] {
        let blob = with_valid_crc(blob.clone(), |b| {
            b[8..12].copy_from_slice(&dim.to_le_bytes());
            b[12..16].copy_from_slice(&arms.to_le_bytes());
        });
        assert!(codec::decode(&blob).is_err(), "d={dim} arms={arms}");
    }
    assert_no_huge_allocation();
}

// ---- policy files -----------------------------------------------------------

/// Every valid policy we have: the test policies and the shipped examples.
fn valid_policies() -> Vec<String> {
    let mut out: Vec<String> = support::POLICIES
        .iter()
        .map(|(_, t)| t.to_string())
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        out.push(std::fs::read_to_string(f).unwrap());
    }
    out
}

/// Values that break assumptions: signs, zeros, NaN and infinities, numbers
/// past every limit, wrong types, huge strings and arrays.
fn nasty_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("nan".to_string()),
        Just("-nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("0".to_string()),
        Just("-0.0".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just("5e-324".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("4294967296".to_string()),
        Just("1025".to_string()),
        Just("65537".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"500000000000y\"".to_string()),
        Just("\"18446744073709551615s\"".to_string()),
        Just("\"11y\"".to_string()),
        Just("[]".to_string()),
        Just("[1e308, -1e308]".to_string()),
        Just("{}".to_string()),
        Just(format!("\"{}\"", "x".repeat(100_000))),
        Just(format!(
            "[{}]",
            (0..50_000)
                .map(|i| format!("\"v{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )),
        Just(format!("[{}]", vec!["\"same\""; 1000].join(","))),
        Just("\"a\\u0000b\"".to_string()),
        Just("\"ü🙂\"".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        "[a-z\"\\[\\]{}=.,0-9 -]{0,12}",
    ]
}

/// One mutation of a policy text's lines.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    ReplaceValue(prop::sample::Index, String),
    InsertLine(prop::sample::Index, String),
    Truncate(prop::sample::Index),
    FlipByte(prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        1 => idx().prop_map(Mutation::DeleteLine),
        1 => idx().prop_map(Mutation::DuplicateLine),
        1 => (idx(), idx()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        4 => (idx(), nasty_value()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        1 => (idx(), prop_oneof![
            Just("[[features.context]]\nname = \"huge\"\ntype = \"vector\"\nlength = 1024".to_string()),
            Just("[[features.context]]\nname = \"h\"\ntype = \"hashed\"\nbuckets = 65536".to_string()),
            Just("[[features.action]]\nname = \"big\"\ntype = \"vector\"\nlength = 4611686018427387904".to_string()),
            Just("[[features.interactions]]\ncontext = \"u\"\naction = \"i\"".to_string()),
            Just("mode = \"shared\"".to_string()),
            Just("algorithm = \"beta_ts\"".to_string()),
            Just("[reward]".to_string()),
            Just("[params]".to_string()),
            "[ -~]{0,40}",
        ]).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
        1 => idx().prop_map(Mutation::Truncate),
        1 => (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i.index(n)].clone();
            lines.insert(i.index(n), l);
        }
        Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Mutation::ReplaceValue(i, v) => {
            // The value of the i-th `key = value` line (any line if none).
            let with_values: Vec<usize> = (0..n).filter(|&j| lines[j].contains('=')).collect();
            let j = if with_values.is_empty() {
                i.index(n)
            } else {
                with_values[i.index(with_values.len())]
            };
            let key = lines[j].split('=').next().unwrap_or("").to_string();
            lines[j] = format!("{key}= {v}");
        }
        Mutation::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
        Mutation::Truncate(i) => {
            let text = lines.join("\n");
            let cut = i.index(text.len() + 1);
            let cut = (0..=cut).rev().find(|c| text.is_char_boundary(*c)).unwrap();
            return text[..cut].to_string();
        }
        Mutation::FlipByte(i, b) => {
            let mut bytes = lines.join("\n").into_bytes();
            let at = i
                .index(bytes.len().max(1))
                .min(bytes.len().saturating_sub(1));
            if let Some(x) = bytes.get_mut(at) {
                *x ^= b | 1;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    lines.join("\n")
}

/// Parses `text`; whatever comes back must not panic, and an accepted spec
/// must keep the promises the maths relies on.
fn parse_checked(text: &str) {
    let Ok(spec) = parse_policy(text, Path::new("fuzz.toml")) else {
        return;
    };
    let dim = spec.features.dim();
    assert!((1..=MAX_DIM).contains(&dim), "accepted dim {dim}");
    let p = spec.params;
    assert!(p.alpha.is_finite() && p.alpha >= 0.0, "alpha {}", p.alpha);
    assert!(
        p.lambda.is_finite() && p.lambda > 0.0,
        "lambda {}",
        p.lambda
    );
    assert!(p.v.is_finite() && p.v > 0.0, "v {}", p.v);
    assert!((0.0..=1.0).contains(&p.epsilon), "epsilon {}", p.epsilon);
    assert!(p.draws >= 1 && p.refactor_every >= 1);
    let r = &spec.reward;
    assert!(!r.window.is_zero() && r.window <= MAX_WINDOW, "{r:?}");
    assert!(r.default.is_finite() && r.check(r.default).is_ok(), "{r:?}");
    assert!(r.signals.values().all(|w| w.is_finite()), "{r:?}");
    let models = match spec.mode {
        Mode::Disjoint => spec.arms.len(),
        Mode::Shared => 1,
    };
    assert!(models >= 1);
    assert!(models * dim * dim <= MAX_MODEL_ENTRIES);
    // Small enough to build here: build it, and decide with an empty
    // context (an error for required features, never a panic).
    if models * dim * dim <= 1 << 16 {
        let policy = Policy::new(spec);
        let model = policy.new_model();
        let ctx: Vec<(String, nudge::features::FeatureValue)> = vec![];
        let _ = policy.decide(
            &model,
            &nudge::policy::DecideRequest::disjoint("fuzz-event", &ctx),
        );
    }
}

proptest! {
    #![proptest_config(config(3000, 23))]

    #[test]
    fn mutated_policy_files_are_refused_or_valid(
        which in any::<prop::sample::Index>(),
        mutations in vec(mutation(), 1..4),
    ) {
        let policies = valid_policies();
        let mut text = policies[which.index(policies.len())].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        parse_checked(&text);
        assert_no_huge_allocation();
    }

    #[test]
    fn arbitrary_text_is_refused_or_valid(text in "(?s).{0,300}") {
        parse_checked(&text);
    }
}

#[test]
fn the_shipped_and_test_policies_parse() {
    for text in valid_policies() {
        assert!(parse_policy(&text, Path::new("x.toml")).is_ok(), "{text}");
    }
}

#[test]
fn vectors_whose_dimensions_overflow_are_an_error_not_a_panic() {
    // Each length alone is refused, but laying them out added the widths
    // up (and multiplied them for the interaction), overflowing `usize`: a
    // panic in debug builds.
    let text = r#"
id = "p"
algorithm = "linucb"
mode = "shared"
[[features.context]]
name = "u"
type = "vector"
length = 9223372036854775807
[[features.action]]
name = "i"
type = "vector"
length = 9223372036854775807
[[features.interactions]]
context = "u"
action = "i"
"#;
    let errors = parse_policy(text, Path::new("p.toml")).unwrap_err();
    assert!(
        errors.iter().any(|e| e.key == "features.context[0].length"),
        "{errors:?}"
    );
}

#[test]
fn a_reward_window_of_centuries_is_refused() {
    // Deadlines are `now_ms + window_ms` in an i64: a window of 5·10¹¹
    // years overflowed it on the first decision.
    for window in ["500000000000y", "11y"] {
        let text = format!(
            "id = \"p\"\nalgorithm = \"linucb\"\narms = [\"a\"]\n[reward]\nwindow = \"{window}\"\n"
        );
        let errors = parse_policy(&text, Path::new("p.toml")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == "reward.window"),
            "{window}: {errors:?}"
        );
    }
}

#[test]
fn a_model_too_large_for_memory_is_refused_at_parse_time() {
    // 1024 arms × 1024² entries × 2 matrices × 8 bytes = 16 GiB: within each
    // limit alone, far beyond any machine together.
    let arms: Vec<String> = (0..1024).map(|i| format!("\"a{i}\"")).collect();
    let text = format!(
        "id = \"p\"\nalgorithm = \"linucb\"\narms = [{}]\n[features]\nbias = false\n[[features.context]]\nname = \"e\"\ntype = \"vector\"\nlength = 1024\n",
        arms.join(",")
    );
    let errors = parse_policy(&text, Path::new("p.toml")).unwrap_err();
    assert!(errors.iter().any(|e| e.key == "features"), "{errors:?}");
}

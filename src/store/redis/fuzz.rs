//! Fuzzing the decoders of what Redis hands back: event blobs, stream
//! entries, stream ids, numbers and vectors. Whatever the bytes (a corrupt
//! key, another program's data, a truncated write), decoding gives an
//! error, never a panic. Seeds are fixed.

use super::blob::*;
use crate::store::{EventRecord, Slot, StoreError, StreamId};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};
use redis::Value;

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

fn event() -> impl Strategy<Value = EventRecord> {
    (
        "[A-Za-z0-9_.:-]{1,20}",
        any::<i64>(),
        any::<bool>(),
        vec(any::<u8>(), 0..40),
        vec(("(?s).{0,12}", any::<u32>(), vec(-1e6f64..1e6, 0..5)), 1..4),
    )
        .prop_map(
            |(event_id, deadline_ms, deferred, response, slots)| EventRecord {
                event_id,
                slots: slots
                    .into_iter()
                    .map(|(action, arm, x)| Slot {
                        action,
                        arm,
                        x,
                        aux: vec![],
                    })
                    .collect(),
                deadline_ms,
                deferred,
                response,
            },
        )
}

/// A Redis reply of any shape, a few levels deep.
fn reply() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::Int),
        vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        prop_oneof![
            Just("x".to_string()),
            Just("r".to_string()),
            Just("m".to_string()),
            Just("e".to_string()),
            Just("1-2".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("1e999".to_string()),
            Just("18446744073709551616".to_string()),
            "[0-9a-z.-]{0,8}",
        ]
        .prop_map(Value::SimpleString),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| vec(inner, 0..6).prop_map(Value::Array))
}

/// A well-formed XRANGE entry with fields from the given values.
fn entry_like() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("e"),
        Just("a"),
        Just("m"),
        Just("r"),
        Just("d"),
        Just("x"),
        Just("?"),
    ];
    (
        prop_oneof![Just("1-1".to_string()), "[0-9-]{0,6}"],
        vec((name, reply()), 0..7),
    )
        .prop_map(|(id, fields)| {
            Value::Array(vec![
                Value::BulkString(id.into_bytes()),
                Value::Array(
                    fields
                        .into_iter()
                        .flat_map(|(n, v)| [Value::BulkString(n.as_bytes().to_vec()), v])
                        .collect(),
                ),
            ])
        })
}

proptest! {
    #![proptest_config(config(2000, 5))]

    #[test]
    fn an_event_blob_round_trips_its_policy_and_response(e in event(), policy in "[a-z_]{1,20}") {
        let head = decode_head(&encode_event(&policy, &e)).unwrap();
        prop_assert_eq!(head.policy, policy);
        prop_assert_eq!(head.response, e.response);
    }

    #[test]
    fn arbitrary_event_blobs_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        let _ = decode_head(&bytes);
    }

    #[test]
    fn mutated_event_blobs_never_panic(
        e in event(),
        at in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        length in prop_oneof![
            Just(u64::MAX.to_string()),
            Just((usize::MAX - 1).to_string()),
            Just("99999999999999999999999".to_string()),
            Just("-1".to_string()),
            Just(String::new()),
            any::<u32>().prop_map(|n| n.to_string()),
        ],
    ) {
        let blob = encode_event("p", &e);
        let mut flipped = blob.clone();
        let i = at.index(flipped.len());
        flipped[i] = byte;
        let _ = decode_head(&flipped);
        let _ = decode_head(&blob[..cut.index(blob.len())]);
        // A length prefix claiming more than there is (or more than a
        // usize holds) in place of the first field's.
        let colon = blob.iter().position(|b| *b == b':').unwrap();
        let mut lying = length.into_bytes();
        lying.extend_from_slice(&blob[colon..]);
        let _ = decode_head(&lying);
    }

    #[test]
    fn arbitrary_stream_replies_never_panic(v in reply()) {
        let _ = parse_entry(v, 0);
    }

    #[test]
    fn stream_entries_with_bad_fields_are_refused_not_fatal(v in entry_like()) {
        if let Ok(entry) = parse_entry(v, 0) {
            prop_assert!(entry.reward.is_finite());
            prop_assert!(entry.x.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn stream_ids_numbers_and_vectors_decode_or_fail_cleanly(
        s in "(?s).{0,30}",
        bytes in vec(any::<u8>(), 0..80),
    ) {
        let _ = s.parse::<StreamId>();
        if let Ok(v) = parse_f64(&s) {
            prop_assert!(v.is_finite());
        }
        if let Ok(x) = decode_raw_vector(&bytes) {
            prop_assert!(x.iter().all(|v| v.is_finite()));
        }
        if let Ok((x, aux)) = decode_compact_payload(&bytes) {
            prop_assert!(x.iter().chain(&aux).all(|v| v.is_finite()));
        }
    }
}

#[test]
fn a_length_prefix_near_usize_max_is_corrupt_not_an_overflow() {
    // `colon + 1 + len` overflowed: a panic in debug builds, a wrapped
    // (wrong) slice bound in release.
    let blob = format!("{}:x", usize::MAX);
    assert!(matches!(
        decode_head(blob.as_bytes()),
        Err(StoreError::Corrupt(_))
    ));
}

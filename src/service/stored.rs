//! The stored form of a decision response: what a pending event keeps so a
//! retried decide gets the same answer, in the store's compact encoding
//! ([`crate::store::compact`]). The event id and the policy are known to
//! whoever reads it back and are not repeated; action ids that are arms of
//! the policy are kept as their index.
//!
//! Layout (format byte `0xC2`, never the first byte of JSON): policy
//! version, model version, flags (deferred, forced, user, timezone,
//! send_at present), the chosen action and its probability, the ranking
//! (count, then id, probability and exclusion of each), then the optional
//! user, timezone and send_at strings. An id is a varint: `2·i` for arm
//! `i` of the policy, `2·n + 1` followed by the text for any other id.
//!
//! A stored response that starts with `{` is the JSON text an older
//! version stored (a pending event or an outbox line from before the
//! upgrade) and is read as such.

use super::decide::{DecideResponse, Ranked};
use crate::guardrails::Exclusion;
use crate::store::compact::{CodecError, Reader, Writer};

const FORMAT: u8 = 0xC2;

const EXCLUSIONS: [Exclusion; 7] = [
    Exclusion::Excluded,
    Exclusion::Cap,
    Exclusion::Gap,
    Exclusion::QuietHours,
    Exclusion::Budget,
    Exclusion::Recovery,
    Exclusion::Unavailable,
];

/// Encodes `response`; `arms` are the policy's arms (empty in shared
/// mode), whose ids are kept as indices.
pub fn encode(response: &DecideResponse, arms: &[String]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + response.ranking.len() * 6);
    let id = |w: &mut Writer, id: &str| match arms.iter().position(|a| a == id) {
        Some(i) => {
            w.varint(2 * i as u64);
        }
        None => {
            w.varint(1).str(id);
        }
    };
    let flags = u8::from(response.deferred)
        | u8::from(response.forced) << 1
        | u8::from(response.user.is_some()) << 2
        | u8::from(response.timezone.is_some()) << 3
        | u8::from(response.send_at.is_some()) << 4;
    w.u8(FORMAT)
        .varint(u64::from(response.policy_version))
        .varint(response.model_version)
        .u8(flags);
    id(&mut w, &response.action);
    w.f64(response.probability);
    w.varint(response.ranking.len() as u64);
    for r in &response.ranking {
        id(&mut w, &r.id);
        w.f64(r.probability);
        w.u8(match r.excluded_by {
            None => 0,
            Some(e) => 1 + EXCLUSIONS.iter().position(|x| *x == e).expect("listed") as u8,
        });
    }
    for s in [&response.user, &response.timezone, &response.send_at]
        .into_iter()
        .flatten()
    {
        w.str(s);
    }
    w.into_bytes()
}

/// Decodes a stored response of `event_id`, decided by `policy` with
/// `arms`.
pub fn decode(
    bytes: &[u8],
    event_id: &str,
    policy: &str,
    arms: &[String],
) -> Result<DecideResponse, CodecError> {
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|_| CodecError("stored JSON response"));
    }
    let mut r = Reader::new(bytes);
    if r.u8()? != FORMAT {
        return Err(CodecError("stored response format"));
    }
    let id = |r: &mut Reader| -> Result<String, CodecError> {
        let v = r.varint()?;
        if v & 1 == 1 {
            return Ok(r.str()?.to_string());
        }
        let i = usize::try_from(v / 2).map_err(|_| CodecError("arm index"))?;
        arms.get(i)
            .cloned()
            .ok_or(CodecError("arm index beyond the policy's arms"))
    };
    let policy_version = u32::try_from(r.varint()?).map_err(|_| CodecError("policy version"))?;
    let model_version = r.varint()?;
    let flags = r.u8()?;
    let action = id(&mut r)?;
    let probability = r.f64()?;
    let n = usize::try_from(r.varint()?).map_err(|_| CodecError("ranking length"))?;
    let mut ranking = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let id = id(&mut r)?;
        let probability = r.f64()?;
        let excluded_by = match r.u8()? {
            0 => None,
            k => Some(
                *EXCLUSIONS
                    .get(usize::from(k) - 1)
                    .ok_or(CodecError("exclusion"))?,
            ),
        };
        ranking.push(Ranked {
            id,
            probability,
            excluded_by,
        });
    }
    let mut text = |bit: u8| -> Result<Option<String>, CodecError> {
        if flags & (1 << bit) == 0 {
            return Ok(None);
        }
        Ok(Some(r.str()?.to_string()))
    };
    let user = text(2)?;
    let timezone = text(3)?;
    let send_at = text(4)?;
    r.finish()?;
    Ok(DecideResponse {
        event_id: event_id.to_string(),
        policy: policy.to_string(),
        policy_version,
        model_version,
        action,
        probability,
        ranking,
        deferred: flags & 1 == 1,
        user,
        timezone,
        send_at,
        forced: flags & 2 == 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms() -> Vec<String> {
        (0..10).map(|i| format!("a{i}")).collect()
    }

    fn response() -> DecideResponse {
        DecideResponse {
            event_id: "ev-1".into(),
            policy: "push".into(),
            policy_version: 3,
            model_version: 123_456,
            action: "a7".into(),
            probability: 0.955,
            ranking: (0..10)
                .map(|i| Ranked {
                    id: format!("a{}", (i + 7) % 10),
                    probability: if i == 0 { 0.955 } else { 0.005 },
                    excluded_by: (i == 9).then_some(Exclusion::QuietHours),
                })
                .collect(),
            deferred: true,
            user: Some("u-42".into()),
            timezone: Some("Europe/Paris".into()),
            send_at: Some("2026-12-02T19:00:00.000Z".into()),
            forced: false,
        }
    }

    #[test]
    fn a_stored_response_decodes_to_the_same_json() {
        let r = response();
        let bytes = encode(&r, &arms());
        let back = decode(&bytes, "ev-1", "push", &arms()).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
    }

    #[test]
    fn a_ten_arm_response_takes_a_fraction_of_its_json() {
        let mut r = response();
        (r.user, r.timezone, r.send_at) = (None, None, None);
        let bytes = encode(&r, &arms());
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            bytes.len() * 8 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn ids_that_are_not_arms_are_kept_as_text() {
        let r = response();
        let bytes = encode(&r, &[]);
        assert_eq!(decode(&bytes, "ev-1", "push", &[]).unwrap(), r);
    }

    #[test]
    fn a_json_response_stored_before_the_upgrade_is_read_as_json() {
        let r = response();
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode(&json, "other", "other", &arms()).unwrap(), r);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let bytes = encode(&response(), &arms());
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n], "e", "p", &arms()).is_err(),
                "prefix {n}"
            );
        }
        // An arm index beyond a policy that lost arms.
        assert!(decode(&bytes, "e", "p", &arms()[..3]).is_err());
    }
}

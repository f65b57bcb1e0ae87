//! What the Redis store writes and reads back: the event blob the Lua
//! scripts take apart, and the learned-stream entries they write.

use super::super::compact;
use super::super::{EventRecord, LearnedEntry, StoreError, StreamId};
use redis::Value;

/// The blob format the scripts read (field 1).
const FORMAT: &[u8] = b"2";

/// Encodes the immutable part of an event as `<len>:<bytes>` fields, read
/// by the Lua scripts' `fields()`: format, policy, deadline, deferred,
/// stored response, slot count, then each slot's action, arm and feature
/// vector (in the [`compact`] encoding, which the scripts copy into the
/// learned stream without reading).
pub(super) fn encode_event(policy: &str, event: &EventRecord) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(n.format(bytes.len()).as_bytes());
        out.push(b':');
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(64 + event.response.len() + event.slots.len() * 160);
    let mut n = itoa::Buffer::new();
    field(&mut out, FORMAT);
    field(&mut out, policy.as_bytes());
    field(&mut out, n.format(event.deadline_ms).as_bytes());
    field(&mut out, if event.deferred { b"1" } else { b"0" });
    field(&mut out, &event.response);
    field(&mut out, n.format(event.slots.len()).as_bytes());
    for s in &event.slots {
        field(&mut out, s.action.as_bytes());
        field(&mut out, n.format(s.arm).as_bytes());
        field(&mut out, &compact::encode_payload(&s.x, &s.aux));
    }
    out
}

/// The start of an event blob: what a reward lookup and a retried decide
/// need.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Head {
    /// The policy that decided the event.
    pub policy: String,
    /// The stored response.
    pub response: Vec<u8>,
}

/// Reads the policy and the response of an event blob.
pub(super) fn decode_head(blob: &[u8]) -> Result<Head, StoreError> {
    let corrupt = || StoreError::Corrupt("event blob".into());
    let mut rest = blob;
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for f in &mut fields {
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(corrupt)?;
        let len: usize = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        // `len` comes from the blob: a huge one must not overflow the sum.
        let end = (colon + 1).checked_add(len).ok_or_else(corrupt)?;
        *f = rest.get(colon + 1..end).ok_or_else(corrupt)?;
        rest = &rest[end..];
    }
    if fields[0] != FORMAT {
        return Err(StoreError::Corrupt(format!(
            "event blob format {:?}",
            String::from_utf8_lossy(fields[0])
        )));
    }
    Ok(Head {
        policy: String::from_utf8(fields[1].to_vec()).map_err(|_| corrupt())?,
        response: fields[4].to_vec(),
    })
}

/// Shortest text that parses back to the same f64 (Rust's `Display`).
pub(super) fn format_f64(v: f64) -> String {
    format!("{v}")
}

pub(super) fn parse_f64(s: &str) -> Result<f64, StoreError> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| StoreError::Corrupt(format!("bad number {s:?}")))
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Decodes a vector of raw little-endian f64s (the `x` field of entries
/// written before the compact encoding); every value must be finite.
pub(super) fn decode_raw_vector(bytes: &[u8]) -> Result<Vec<f64>, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Corrupt(format!(
            "vector of {} bytes",
            bytes.len()
        )));
    }
    let x: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    finite(x)
}

/// Decodes a [`compact`] payload (vector, then aux numbers); every value
/// must be finite.
pub(super) fn decode_compact_payload(bytes: &[u8]) -> Result<(Vec<f64>, Vec<f64>), StoreError> {
    let (x, aux) =
        compact::decode_payload(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((finite(x)?, finite(aux)?))
}

fn finite(x: Vec<f64>) -> Result<Vec<f64>, StoreError> {
    if x.iter().any(|v| !v.is_finite()) {
        return Err(StoreError::Corrupt(
            "non-finite value in a stored vector".into(),
        ));
    }
    Ok(x)
}

/// `[id, [field, value, …]]` of an XRANGE reply.
/// A stream entry, or — when only its id can be read — a placeholder the
/// model refuses (no such arm), so the replica counts it as skipped and
/// moves its cursor past it: one unreadable entry must not stop a policy
/// from learning everything after it. An entry without a readable id is an
/// error (the cursor could not move past it).
pub(super) fn parse_entry_or_skip(v: Value, shard: u16) -> Result<LearnedEntry, StoreError> {
    let id = match &v {
        Value::Array(parts) => parts.first().and_then(text),
        _ => None,
    };
    let Some(id) = id else {
        return Err(StoreError::Corrupt("stream entry without an id".into()));
    };
    let id: StreamId = id.parse()?;
    parse_entry(v, shard).or_else(|e| {
        tracing::error!(%id, error = %e, "unreadable learned-stream entry skipped");
        Ok(LearnedEntry {
            shard,
            id,
            event_id: String::new(),
            action: String::new(),
            arm: u32::MAX,
            x: Vec::new(),
            reward: 0.0,
            is_default: false,
            aux: Vec::new(),
        })
    })
}

pub(super) fn parse_entry(v: Value, shard: u16) -> Result<LearnedEntry, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("stream entry: {what}"));
    let Value::Array(parts) = v else {
        return Err(corrupt("not an array"));
    };
    let [id, fields]: [Value; 2] = parts.try_into().map_err(|_| corrupt("shape"))?;
    let id: StreamId = text(&id).ok_or_else(|| corrupt("id"))?.parse()?;
    let Value::Array(fields) = fields else {
        return Err(corrupt("fields"));
    };
    let mut entry = LearnedEntry {
        shard,
        id,
        event_id: String::new(),
        action: String::new(),
        arm: 0,
        x: vec![],
        reward: 0.0,
        is_default: false,
        aux: vec![],
    };
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(corrupt("odd field list"));
        };
        let name = text(name).ok_or_else(|| corrupt("field name"))?;
        match name.as_str() {
            "x" | "v" => {
                let Value::BulkString(bytes) = value else {
                    return Err(corrupt("x"));
                };
                if name == "v" {
                    (entry.x, entry.aux) = decode_compact_payload(bytes)?;
                } else {
                    entry.x = decode_raw_vector(bytes)?;
                }
            }
            other => {
                let value = text(value).ok_or_else(|| corrupt(other))?;
                match other {
                    "e" => entry.event_id = value,
                    "a" => entry.action = value,
                    "m" => entry.arm = value.parse().map_err(|_| corrupt("arm"))?,
                    "r" => entry.reward = parse_f64(&value)?,
                    "d" => entry.is_default = value == "1",
                    _ => {}
                }
            }
        }
    }
    Ok(entry)
}

//! Unit tests of the pure parts: error classification, partition names and
//! bounds, URL redaction, spool files (torn lines, rotation).

use super::db::{pg_code_is_transient, sqlite_code_is_transient};
use super::postgres::{month_start, partition_ddl};
use super::spool::{ACTIVE, REPLAYING, Spool, read_chunk};
use super::*;
use chrono::NaiveDate;
use std::sync::atomic::AtomicU64;

fn activation(i: usize) -> LogRecord {
    LogRecord::Activation(ActivationRow {
        event_id: format!("e{i}"),
        policy: "p".into(),
        activated_at: DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
    })
}

#[test]
fn availability_errors_are_told_apart_from_bad_data() {
    // Connection, unknown database, undefined table, disk full, shutdown.
    for code in ["08006", "3D000", "42P01", "53100", "57P01", "40P01"] {
        assert!(pg_code_is_transient(code), "{code}");
    }
    // NUL byte in text, untranslatable JSON, check / not-null violations.
    for code in ["22021", "22P05", "23514", "23502"] {
        assert!(!pg_code_is_transient(code), "{code}");
    }
    // SQLITE_BUSY, SQLITE_IOERR_WRITE, SQLITE_FULL, SQLITE_ERROR.
    for code in [5, 778, 13, 1] {
        assert!(sqlite_code_is_transient(code), "{code}");
    }
    // SQLITE_CONSTRAINT_NOTNULL, SQLITE_TOOBIG, SQLITE_MISMATCH.
    for code in [1299, 18, 20] {
        assert!(!sqlite_code_is_transient(code), "{code}");
    }
    let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
    assert!(db::is_transient(&refused));
    assert!(db::is_transient(&sqlx::Error::PoolTimedOut));
}

#[test]
fn monthly_partitions_are_named_and_bounded_by_calendar_month_across_years() {
    let day = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
    assert_eq!(
        month_start(day, 0),
        NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
    );
    assert_eq!(
        month_start(day, 2),
        NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
    );
    let (name, ddl) = partition_ddl("decisions", month_start(day, 1));
    assert_eq!(name, "decisions_y2026m12");
    assert_eq!(
        ddl,
        "CREATE TABLE IF NOT EXISTS decisions_y2026m12 PARTITION OF decisions \
         FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
    );
}

#[test]
fn urls_are_shown_without_their_password() {
    assert_eq!(
        redact_url("postgres://nudge:s3cret@db:5432/nudge"),
        "postgres://nudge:***@db:5432/nudge"
    );
    assert_eq!(redact_url("sqlite://nudge.db"), "sqlite://nudge.db");
    let settings = LogSettings::new("postgres://u:pw@h/d", "/tmp");
    assert!(!format!("{settings:?}").contains("pw"));
}

#[tokio::test]
async fn the_spool_skips_a_torn_line_and_keeps_later_appends_on_their_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let mut text = spool::encode_lines(&[activation(0), activation(1)]);
    text.extend_from_slice(br#"{"kind":"activation","event_id":"tor"#);
    std::fs::write(spool_dir.join(ACTIVE), &text).unwrap();

    let bytes = Arc::new(AtomicU64::new(0));
    let mut spool = Spool::open(&spool_dir, bytes.clone()).unwrap();
    assert_eq!(bytes.load(Ordering::Relaxed), text.len() as u64 + 1);
    spool.append(&[activation(2)], true).unwrap();

    let (path, offset) = spool.begin_replay().unwrap().unwrap();
    assert_eq!(
        (path.file_name().unwrap().to_str().unwrap(), offset),
        (REPLAYING, 0)
    );
    assert!(!spool.is_empty());
    let chunk = read_chunk(&path, 0, 100).await.unwrap();
    let records: Vec<LogRecord> = chunk.records.into_iter().map(|(r, _)| r).collect();
    assert_eq!(records, vec![activation(0), activation(1), activation(2)]);
    assert!(chunk.eof);

    // Appends during the replay go to a fresh file, replayed next.
    spool.append(&[activation(3)], false).unwrap();
    spool.replayed_to(chunk.end);
    spool.finish_replay().unwrap();
    assert!(!spool.is_empty());
    let (path, _) = spool.begin_replay().unwrap().unwrap();
    let chunk = read_chunk(&path, 0, 1).await.unwrap();
    assert_eq!(chunk.records.len(), 1);
    spool.finish_replay().unwrap();
    assert!(spool.is_empty());
    assert_eq!(bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_second_log_cannot_take_a_spool_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let first = Spool::open(dir.path(), bytes.clone()).unwrap();
    let second = Spool::open(dir.path(), bytes.clone());
    assert!(second.is_err());
    drop(first);
    Spool::open(dir.path(), bytes).unwrap();
}

#[test]
fn verbatim_json_is_kept_as_sent_unless_it_spans_lines() {
    let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
    let kept = JsonText::verbatim(raw(r#"{ "a":1.50,"b" : "x\ny" }"#)).unwrap();
    assert_eq!(kept.as_str(), r#"{ "a":1.50,"b" : "x\ny" }"#);
    // A spool record is one line: text with a line break is refused.
    assert!(JsonText::verbatim(raw("{\n\"a\": 1}")).is_none());
    assert!(JsonText::verbatim(raw("{\r\"a\": 1}")).is_none());
}

use super::*;
use crate::policy::parse_policy;
use chrono::{TimeZone, Utc};
use std::path::Path;

const POLICY: &str = r#"
id = "push"
algorithm = "linucb"
arms = ["send_now", "send_evening", "send_later", "skip"]

[[features.context]]
name = "sends_24h"
type = "history"
stat = "sends"
per = "24h"

[[features.context]]
name = "hours_since_now"
type = "history"
stat = "hours_since_arm"
arm = "send_now"
default = 168.0

[[features.context]]
name = "open_rate"
type = "history"
stat = "outcome_rate"
per = "7d"
default = 0.1

[guardrails]
send_arms = ["send_now", "send_evening", "send_later"]
fallback = "skip"
min_gap = "1h"
quiet_hours = { start = "22:00", end = "08:00" }
default_timezone = "Europe/Berlin"
recovery = { send_now = "6h" }
delivery = { send_evening = "19:00", send_later = "+3h" }

[[guardrails.caps]]
max = 2
per = "24h"

[[guardrails.caps]]
max = 3
per = "24h"
group = "push_all"

[[guardrails.budgets]]
max = 10
per = "24h"
"#;

fn rules() -> Guardrails {
    parse_policy(POLICY, Path::new("push.toml"))
        .expect("valid")
        .guardrails
        .expect("guardrails")
}

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .timestamp_millis()
}

fn send(event: &str, at_ms: i64, policy: &str, arm: &str, groups: &[&str]) -> SendRecord {
    SendRecord {
        event_id: event.into(),
        at_ms,
        policy: policy.into(),
        arm: arm.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        outcome: None,
    }
}

fn situation<'a>(now_ms: i64, tz: Tz, h: &'a UserHistory, used: &'a [u64]) -> Situation<'a> {
    Situation {
        policy: "push",
        now_ms,
        tz,
        history: Some(h),
        budget_used: used,
        unavailable: false,
        excluded: &[],
    }
}

#[test]
fn a_policy_file_declares_every_rule() {
    let g = rules();
    assert_eq!(g.send, vec![true, true, true, false]);
    assert_eq!(g.fallback, 3);
    assert_eq!(g.groups, vec!["push_all".to_string()]);
    assert_eq!(g.caps.len(), 2);
    assert_eq!(g.min_gap_ms, Some(3_600_000));
    assert_eq!(g.delivery[1], Delivery::AtLocal(19 * 60));
    assert_eq!(g.delivery[2], Delivery::After(3 * 3_600_000));
    assert_eq!(g.recovery[0], Some(6 * 3_600_000));
    assert_eq!(g.history.len(), 3);
    assert_eq!(g.default_tz, chrono_tz::Europe::Berlin);
}

#[test]
fn invalid_guardrails_are_refused_with_the_key_named() {
    let cases = [
        (
            "fallback = \"skip\"",
            "fallback = \"send_now\"",
            "guardrails.fallback",
        ),
        (
            "fallback = \"skip\"",
            "fallback = \"nope\"",
            "guardrails.fallback",
        ),
        (
            "min_gap = \"1h\"",
            "min_gap = \"soon\"",
            "guardrails.min_gap",
        ),
        (
            "start = \"22:00\"",
            "start = \"25:00\"",
            "guardrails.quiet_hours.start",
        ),
        (
            "\"Europe/Berlin\"",
            "\"Mars/Olympus\"",
            "guardrails.default_timezone",
        ),
        (
            "send_now = \"6h\"",
            "skip = \"6h\"",
            "guardrails.recovery.skip",
        ),
        ("max = 2\n", "max = 0\n", "guardrails.caps[0].max"),
        ("max = 10\n", "max = -1\n", "guardrails.budgets[0].max"),
        (
            "stat = \"sends\"",
            "stat = \"clicks\"",
            "features.context[0].stat",
        ),
        (
            "send_evening = \"19:00\"",
            "send_evening = \"7pm\"",
            "guardrails.delivery.send_evening",
        ),
    ];
    for (from, to, key) in cases {
        let text = POLICY.replacen(from, to, 1);
        let errors = parse_policy(&text, Path::new("p.toml")).expect_err(to);
        assert!(
            errors.iter().any(|e| e.key == key),
            "{to}: expected an error at {key}, got {errors:?}"
        );
    }
}

#[test]
fn a_capped_user_can_only_be_held_and_the_hold_is_forced() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let mut h = UserHistory::default();
    h.push(send(
        "a",
        now - 5 * 3_600_000,
        "push",
        "send_later",
        &["push_all"],
    ));
    h.push(send(
        "b",
        now - 3 * 3_600_000,
        "push",
        "send_later",
        &["push_all"],
    ));
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[0]));
    // Two sends in 24 h: every send arm is capped (the evening slot too:
    // it is counted from its delivery time, still within the window).
    assert_eq!(
        e.reasons,
        vec![
            Some(Exclusion::Cap),
            Some(Exclusion::Cap),
            Some(Exclusion::Cap),
            None
        ]
    );
    assert!(e.forced);
}

#[test]
fn a_group_cap_counts_sends_of_other_policies() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let mut h = UserHistory::default();
    for (i, hours) in [20, 16, 12].iter().enumerate() {
        h.push(send(
            &format!("o{i}"),
            now - hours * 3_600_000,
            "other",
            "push",
            &["push_all"],
        ));
    }
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[0]));
    assert_eq!(e.reasons[0], Some(Exclusion::Cap));
    // Sends of another policy outside the group do not count.
    let mut h2 = UserHistory::default();
    for (i, hours) in [20, 16, 12].iter().enumerate() {
        h2.push(send(
            &format!("o{i}"),
            now - hours * 3_600_000,
            "other",
            "push",
            &["email"],
        ));
    }
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h2, &[0]));
    assert_eq!(e.reasons[0], None);
}

#[test]
fn the_gap_and_recovery_hold_sends_too_close_to_the_last() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let mut h = UserHistory::default();
    h.push(send("a", now - 30 * 60_000, "push", "send_later", &[]));
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[0]));
    assert_eq!(e.reasons[0], Some(Exclusion::Gap));
    // The later slot is 3 h away from the last send: allowed.
    assert_eq!(e.reasons[2], None);

    let mut h = UserHistory::default();
    h.push(send("a", now - 2 * 3_600_000, "push", "send_now", &[]));
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[0]));
    assert_eq!(e.reasons[0], Some(Exclusion::Recovery));
    assert_eq!(e.reasons[2], None, "recovery is per arm");
}

#[test]
fn a_spent_budget_holds_every_send() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let h = UserHistory::default();
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[10]));
    assert!(e.reasons[..3].iter().all(|r| *r == Some(Exclusion::Budget)));
    assert!(e.forced);
    let e = eligibility(&g, &situation(now, chrono_tz::UTC, &h, &[9]));
    assert!(e.reasons[..3].iter().all(Option::is_none));
}

#[test]
fn an_unreadable_history_holds_sends_and_the_caller_can_exclude_arms() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let h = UserHistory::default();
    let mut s = situation(now, chrono_tz::UTC, &h, &[0]);
    s.unavailable = true;
    let e = eligibility(&g, &s);
    assert!(
        e.reasons[..3]
            .iter()
            .all(|r| *r == Some(Exclusion::Unavailable))
    );
    let mut s = situation(now, chrono_tz::UTC, &h, &[0]);
    s.excluded = &[1];
    let e = eligibility(&g, &s);
    assert_eq!(e.reasons[1], Some(Exclusion::Excluded));
    assert!(!e.forced);
}

#[test]
fn quiet_hours_follow_local_time_in_several_zones() {
    let g = rules();
    let h = UserHistory::default();
    // 21:30 UTC on a June day: 23:30 in Berlin (quiet), 17:30 in New York
    // (not quiet), 06:30 next day in Tokyo (quiet).
    let now = ms(2026, 6, 1, 21, 30);
    for (tz, quiet) in [
        (chrono_tz::Europe::Berlin, true),
        (chrono_tz::America::New_York, false),
        (chrono_tz::Asia::Tokyo, true),
        (chrono_tz::UTC, false),
    ] {
        let e = eligibility(&g, &situation(now, tz, &h, &[0]));
        assert_eq!(e.reasons[0] == Some(Exclusion::QuietHours), quiet, "{tz}");
    }
}

#[test]
fn quiet_hours_hold_across_a_dst_change() {
    let mut g = rules();
    g.quiet = Some(QuietHours {
        start: 22 * 60,
        end: 8 * 60,
        redirect: Redirect::Delay,
    });
    let berlin = chrono_tz::Europe::Berlin;
    let h = UserHistory::default();
    // Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST).
    // 07:30 local on the 29th is 05:30 UTC (CEST, +2): still quiet; the
    // send is delayed to 08:00 local = 06:00 UTC.
    let e = eligibility(&g, &situation(ms(2026, 3, 29, 5, 30), berlin, &h, &[0]));
    assert_eq!(e.reasons[0], None);
    assert_eq!(e.send_at[0], Some(ms(2026, 3, 29, 6, 0)));
    // The day before (CET, +1) the same local time is 06:30 UTC and ends
    // at 07:00 UTC.
    let e = eligibility(&g, &situation(ms(2026, 3, 28, 6, 30), berlin, &h, &[0]));
    assert_eq!(e.send_at[0], Some(ms(2026, 3, 28, 7, 0)));
    // 08:30 local on the 29th (06:30 UTC) is not quiet: sent now.
    let e = eligibility(&g, &situation(ms(2026, 3, 29, 6, 30), berlin, &h, &[0]));
    assert_eq!(e.send_at[0], Some(ms(2026, 3, 29, 6, 30)));
    // Falling back on 2026-10-25 (03:00 CEST -> 02:00 CET): 22:30 local on
    // the 24th is 20:30 UTC; quiet ends at 08:00 CET = 07:00 UTC on the
    // 25th, ten and a half hours later.
    let e = eligibility(&g, &situation(ms(2026, 10, 24, 20, 30), berlin, &h, &[0]));
    assert_eq!(e.send_at[0], Some(ms(2026, 10, 25, 7, 0)));
}

#[test]
fn delivery_slots_give_send_at_outside_quiet_hours() {
    let g = rules();
    let h = UserHistory::default();
    let ny = chrono_tz::America::New_York;
    // 14:00 UTC is 10:00 in New York (EDT, -4): the evening slot is 19:00
    // local = 23:00 UTC the same day; "+3h" is 17:00 UTC.
    let now = ms(2026, 6, 1, 14, 0);
    let e = eligibility(&g, &situation(now, ny, &h, &[0]));
    assert_eq!(e.send_at[1], Some(ms(2026, 6, 1, 23, 0)));
    assert_eq!(e.send_at[2], Some(ms(2026, 6, 1, 17, 0)));
    // At 20:00 local (00:00 UTC) the evening slot is tomorrow's; "+3h" is
    // 23:00 local, in quiet hours, so it is held.
    let now = ms(2026, 6, 2, 0, 0);
    let e = eligibility(&g, &situation(now, ny, &h, &[0]));
    assert_eq!(e.send_at[1], Some(ms(2026, 6, 2, 23, 0)));
    assert_eq!(e.reasons[2], Some(Exclusion::QuietHours));
}

#[test]
fn history_features_count_sends_recency_and_outcomes() {
    let g = rules();
    let now = ms(2026, 6, 1, 12, 0);
    let mut h = UserHistory::default();
    h.push(send("a", now - 30 * 3_600_000, "push", "send_now", &[]));
    h.push(send("b", now - 10 * 3_600_000, "push", "send_later", &[]));
    h.push(send("c", now - 2 * 3_600_000, "push", "send_later", &[]));
    // A retried send is kept once.
    h.push(send("c", now - 2 * 3_600_000, "push", "send_later", &[]));
    assert!(h.set_outcome("b", 1.0));
    let v = history_values(&g, "push", &h, now);
    assert_eq!(v[0], Some(2.0));
    assert_eq!(v[1], Some(30.0));
    assert!((v[2].unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let empty = history_values(&g, "push", &UserHistory::default(), now);
    assert_eq!(empty, vec![Some(0.0), None, None]);
}

#[test]
fn send_records_round_trip_through_their_compact_text() {
    let mut s = send("e1", 1_780_000_000_000, "push", "send_now", &["a", "b"]);
    assert_eq!(SendRecord::decode("e1", &s.encode()), Some(s.clone()));
    s.outcome = Some(0.5);
    s.groups.clear();
    assert_eq!(SendRecord::decode("e1", &s.encode()), Some(s));
    assert_eq!(SendRecord::decode("e1", "x|y"), None);
}

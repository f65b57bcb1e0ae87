//! One suite of store semantics, run against both implementations: the
//! in-process store and a real Redis (127.0.0.1:6379) under a key prefix of
//! its own.

use super::*;

const T0: i64 = 1_800_000_000_000;

/// `reward` without an idempotency key, as the tests call it.
impl Store {
    async fn reward_at(
        &self,
        policy: &str,
        event_id: &str,
        action: Option<&str>,
        reward: f64,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<RewardOutcome, StoreError> {
        self.reward(&RewardRequest {
            policy,
            event_id,
            action,
            reward,
            rules,
            now_ms,
            reward_id: None,
        })
        .await
    }
}

/// A one-shard cursor at `id`.
fn at(id: StreamId) -> Cursor {
    let mut c = Cursor::default();
    c.advance(0, id);
    c
}

fn rules(sum: bool) -> RewardRules {
    RewardRules {
        sum,
        default_reward: -0.25,
        window_ms: 1000,
        retention_ms: 60_000,
    }
}

fn event(id: &str, deferred: bool, slots: usize) -> EventRecord {
    EventRecord {
        event_id: id.to_string(),
        slots: (0..slots)
            .map(|j| Slot {
                action: format!("act{j}"),
                arm: j as u32,
                x: vec![1.0, j as f64, 0.5],
                // Slot 0 carries aux numbers back: the store keeps them.
                aux: if j == 0 { vec![0.25, 0.125] } else { vec![] },
            })
            .collect(),
        deadline_ms: T0 + 1000,
        deferred,
        response: format!("{{\"event_id\":\"{id}\"}}").into_bytes(),
    }
}

struct Redis {
    store: Store,
    prefix: String,
}

impl Redis {
    fn new() -> Redis {
        let prefix = format!("nudge-test-{}", uuid::Uuid::now_v7().simple());
        let store = RedisStore::new(
            "redis://127.0.0.1:6379",
            &prefix,
            std::time::Duration::from_secs(2),
        )
        .expect("redis url");
        Redis {
            store: Store::new(store),
            prefix,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Best effort: remove this test's keys from the shared Redis.
        if let Ok(client) = ::redis::Client::open("redis://127.0.0.1:6379")
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = ::redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

async fn both(test: impl AsyncFn(&Store)) {
    test(&Store::new(MemoryStore::new())).await;
    let redis = Redis::new();
    test(&redis.store).await;
}

#[tokio::test]
async fn a_retried_decision_returns_the_stored_response() {
    both(async |s: &Store| {
        let e = event("e1", false, 1);
        assert_eq!(
            s.record("p", &e, &rules(false), T0).await.unwrap(),
            Recorded::New
        );
        let mut retry = e.clone();
        retry.response = b"different".to_vec();
        assert_eq!(
            s.record("p", &retry, &rules(false), T0).await.unwrap(),
            Recorded::Existing(e.response.clone())
        );
        assert_eq!(s.event_policy("e1").await.unwrap().as_deref(), Some("p"));
        assert_eq!(s.event_policy("nope").await.unwrap(), None);
        assert_eq!(s.pending("p").await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_first_reward_is_learned_once_and_a_second_is_refused() {
    both(async |s: &Store| {
        let r = rules(false);
        s.record("p", &event("e1", false, 2), &r, T0).await.unwrap();
        let reward = |a: Option<&'static str>, now| s.reward_at("p", "e1", a, 0.75, &r, now);
        assert_eq!(
            reward(None, T0 + 1).await.unwrap(),
            RewardOutcome::Learned("act0".into())
        );
        assert_eq!(
            reward(None, T0 + 2).await.unwrap(),
            RewardOutcome::AlreadyRewarded
        );
        assert_eq!(
            reward(Some("act0"), T0 + 2).await.unwrap(),
            RewardOutcome::AlreadyRewarded
        );
        assert_eq!(
            reward(Some("act1"), T0 + 3).await.unwrap(),
            RewardOutcome::Learned("act1".into())
        );
        assert_eq!(
            reward(Some("zzz"), T0 + 3).await.unwrap(),
            RewardOutcome::UnknownAction
        );
        let unknown = s.reward_at("p", "nope", None, 1.0, &r, T0).await.unwrap();
        assert_eq!(unknown, RewardOutcome::UnknownEvent);
        s.record("p", &event("late", false, 1), &r, T0)
            .await
            .unwrap();
        let late = s
            .reward_at("p", "late", None, 1.0, &r, T0 + 1001)
            .await
            .unwrap();
        assert_eq!(late, RewardOutcome::Expired);

        let batch = s.sync("p", None, &Cursor::default(), 100).await.unwrap();
        assert_eq!(
            batch.snapshot.as_ref().map(|s| s.blob.is_none()),
            Some(true)
        );
        let learned: Vec<(&str, u32, f64, bool)> = batch
            .entries
            .iter()
            .map(|e| (e.action.as_str(), e.arm, e.reward, e.is_default))
            .collect();
        assert_eq!(
            learned,
            vec![("act0", 0, 0.75, false), ("act1", 1, 0.75, false)]
        );
        assert_eq!(batch.entries[1].x, vec![1.0, 1.0, 0.5]);
        assert_eq!(batch.entries[0].event_id, "e1");
        assert_eq!(batch.entries[0].aux, vec![0.25, 0.125], "aux comes back");
        assert!(batch.entries[1].aux.is_empty());
    })
    .await;
}

#[tokio::test]
async fn closed_windows_learn_the_sum_or_the_default_exactly_once() {
    both(async |s: &Store| {
        let r = rules(true);
        s.record("p", &event("summed", false, 1), &r, T0)
            .await
            .unwrap();
        s.record("p", &event("silent", false, 2), &r, T0)
            .await
            .unwrap();
        for v in [0.5, 1.25] {
            let out = s
                .reward_at("p", "summed", None, v, &r, T0 + 10)
                .await
                .unwrap();
            assert_eq!(out, RewardOutcome::Accumulated("act0".into()));
        }
        let early = s.sweep("p", &r, T0 + 999, 100).await.unwrap();
        assert!(early.learned.is_empty());
        let swept = s.sweep("p", &r, T0 + 1000, 100).await.unwrap();
        let mut learned = swept.learned.clone();
        learned.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        assert_eq!(
            learned,
            vec![
                ("silent".into(), "act0".into(), -0.25, true),
                ("silent".into(), "act1".into(), -0.25, true),
                ("summed".into(), "act0".into(), 1.75, false),
            ]
        );
        assert!(
            s.sweep("p", &r, T0 + 5000, 100)
                .await
                .unwrap()
                .learned
                .is_empty()
        );
        assert_eq!(s.pending("p").await.unwrap(), 0);
        let after = s
            .reward_at("p", "summed", None, 1.0, &r, T0 + 1001)
            .await
            .unwrap();
        assert_eq!(after, RewardOutcome::Expired);
        let entries = s
            .sync("p", None, &Cursor::default(), 100)
            .await
            .unwrap()
            .entries;
        assert_eq!(entries.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn deferred_decisions_are_learned_only_once_activated() {
    both(async |s: &Store| {
        let r = rules(false);
        s.record("p", &event("d1", true, 1), &r, T0).await.unwrap();
        s.record("p", &event("d2", true, 1), &r, T0).await.unwrap();
        s.record("p", &event("plain", false, 1), &r, T0)
            .await
            .unwrap();
        assert_eq!(
            s.reward_at("p", "d1", None, 1.0, &r, T0).await.unwrap(),
            RewardOutcome::NotActivated
        );
        assert_eq!(
            s.activate("p", "plain", &r, T0).await.unwrap(),
            ActivateOutcome::NotDeferred
        );
        assert_eq!(
            s.activate("p", "nope", &r, T0).await.unwrap(),
            ActivateOutcome::UnknownEvent
        );
        assert_eq!(
            s.activate("p", "d1", &r, T0 + 500).await.unwrap(),
            ActivateOutcome::Activated
        );
        assert_eq!(
            s.activate("p", "d1", &r, T0 + 600).await.unwrap(),
            ActivateOutcome::AlreadyActive
        );
        // d2 never activated: dropped at its deadline, learned from never.
        let swept = s.sweep("p", &r, T0 + 1000, 100).await.unwrap();
        assert_eq!(swept.dropped, vec!["d2".to_string()]);
        assert_eq!(
            swept.learned.len(),
            1,
            "only `plain` gets its default: {swept:?}"
        );
        assert_eq!(
            s.activate("p", "d2", &r, T0 + 1001).await.unwrap(),
            ActivateOutcome::Expired
        );
        // d1's window restarted at activation: open until T0 + 1500.
        assert_eq!(
            s.reward_at("p", "d1", None, 1.0, &r, T0 + 1400)
                .await
                .unwrap(),
            RewardOutcome::Learned("act0".into())
        );
        let entries = s
            .sync("p", None, &Cursor::default(), 100)
            .await
            .unwrap()
            .entries;
        let events: Vec<&str> = entries.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(events, vec!["plain", "d1"]);
    })
    .await;
}

#[tokio::test]
async fn replicas_fold_the_stream_from_snapshots_and_reload_after_a_reset() {
    both(async |s: &Store| {
        let r = rules(false);
        for i in 0..5 {
            let id = format!("e{i}");
            s.record("p", &event(&id, false, 1), &r, T0).await.unwrap();
            s.reward_at("p", &id, None, i as f64, &r, T0 + 1)
                .await
                .unwrap();
        }
        let first = s.sync("p", None, &Cursor::default(), 3).await.unwrap();
        assert_eq!(first.entries.len(), 3, "limit respected");
        let cursor = first.entries[2].id;
        let rest = s
            .sync("p", Some(first.epoch), &at(cursor), 100)
            .await
            .unwrap();
        assert!(rest.snapshot.is_none());
        assert_eq!(
            rest.entries.iter().map(|e| e.reward).collect::<Vec<_>>(),
            vec![3.0, 4.0]
        );
        // A replica that has folded 3 entries snapshots them.
        assert!(
            s.save_snapshot("p", first.epoch, b"state-3", &at(cursor))
                .await
                .unwrap()
        );
        assert!(
            !s.save_snapshot("p", first.epoch, b"older", &at(first.entries[1].id))
                .await
                .unwrap()
        );
        // A replica behind the snapshot reloads it, then reads what follows.
        let behind = s
            .sync("p", Some(first.epoch), &at(first.entries[0].id), 100)
            .await
            .unwrap();
        let snap = behind.snapshot.expect("reload");
        assert_eq!(
            (snap.blob.as_deref(), snap.cursor),
            (Some(&b"state-3"[..]), at(cursor))
        );
        assert_eq!(behind.entries.len(), 2);
        // A reset bumps the epoch: everyone reloads the fresh model and the
        // entries learned before are gone.
        let last = rest.entries[1].id;
        s.reset("p", b"fresh").await.unwrap();
        let after = s
            .sync("p", Some(first.epoch), &at(last), 100)
            .await
            .unwrap();
        assert_ne!(after.epoch, first.epoch);
        assert_eq!(after.snapshot.unwrap().blob.as_deref(), Some(&b"fresh"[..]));
        assert!(after.entries.is_empty());
        assert!(
            !s.save_snapshot("p", first.epoch, b"stale", &at(last))
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_rewards_and_sweeps_learn_each_slot_exactly_once() {
    both(async |s: &Store| {
        let r = rules(false);
        for i in 0..20 {
            s.record("p", &event(&format!("e{i}"), false, 1), &r, T0)
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut learned = 0;
                for i in 0..20 {
                    let out = s
                        .reward_at("p", &format!("e{i}"), None, 1.0, &r, T0 + 1)
                        .await
                        .unwrap();
                    learned += usize::from(matches!(out, RewardOutcome::Learned(_)));
                }
                let swept = s.sweep("p", &r, T0 + 2000 + worker, 100).await.unwrap();
                learned + swept.learned.len()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 20);
        let entries = s
            .sync("p", None, &Cursor::default(), 1000)
            .await
            .unwrap()
            .entries;
        assert_eq!(entries.len(), 20);
    })
    .await;
}

#[test]
fn stream_ids_and_cursors_parse_print_and_compare() {
    assert_eq!(
        "12-3".parse::<StreamId>().unwrap(),
        StreamId { ms: 12, seq: 3 }
    );
    assert!("12".parse::<StreamId>().is_err());
    let c: Cursor = "1-2,0-0,5-1".parse().unwrap();
    assert_eq!(c.to_string(), "1-2,0-0,5-1");
    assert_eq!(c.get(2), StreamId { ms: 5, seq: 1 });
    assert_eq!(c.get(7), StreamId::default());
    assert!(c.covers(&"1-2".parse().unwrap()));
    assert!(!c.covers(&"1-3".parse().unwrap()));
    assert!(!"1-2".parse::<Cursor>().unwrap().covers(&c));
    assert!("1-2,x".parse::<Cursor>().is_err());
    assert_eq!(Cursor::default().to_string(), "0-0");
}

#[tokio::test]
async fn an_event_id_decided_by_one_policy_is_refused_to_another() {
    both(async |s: &Store| {
        let r = rules(false);
        let e = event("shared-id", false, 1);
        assert_eq!(s.record("p", &e, &r, T0).await.unwrap(), Recorded::New);
        assert_eq!(
            s.record("q", &e, &r, T0).await.unwrap(),
            Recorded::OtherPolicy("p".into())
        );
        assert_eq!(s.pending("q").await.unwrap(), 0);
        assert_eq!(
            s.reward_at("q", "shared-id", None, 1.0, &r, T0 + 1)
                .await
                .unwrap(),
            RewardOutcome::UnknownEvent
        );
        assert_eq!(s.event_response("q", "shared-id").await.unwrap(), None);
        assert_eq!(s.event_policy("shared-id").await.unwrap(), Some("p".into()));
    })
    .await;
}

/// A single-node Redis store with `shards` shards.
fn sharded(shards: u16) -> (Redis, Store) {
    let redis = Redis::new();
    let mut config = RedisConfig::single(
        "redis://127.0.0.1:6379",
        &redis.prefix,
        std::time::Duration::from_secs(2),
    );
    config.shards = shards;
    let store = Store::new(RedisStore::with_config(&config).unwrap());
    (redis, store)
}

/// Syncs until nothing more comes, `limit` at a time; returns what was
/// folded, in order, and the cursor.
async fn fold_all(s: &Store, limit: usize) -> (Vec<(String, String)>, Cursor, u64) {
    let mut cursor = Cursor::default();
    let mut epoch = None;
    let mut folded = Vec::new();
    for _ in 0..100 {
        let batch = s.sync("p", epoch, &cursor, limit).await.unwrap();
        epoch = Some(batch.epoch);
        if let Some(snap) = batch.snapshot {
            cursor = snap.cursor;
        }
        if batch.entries.is_empty() {
            break;
        }
        for e in batch.entries {
            cursor.advance(usize::from(e.shard), e.id);
            folded.push((e.event_id, e.action));
        }
    }
    (folded, cursor, epoch.unwrap())
}

#[tokio::test]
async fn a_sharded_store_learns_every_event_once_in_one_order_for_every_reader() {
    let (_redis, s) = sharded(4);
    let r = rules(false);
    for i in 0..40 {
        s.record("p", &event(&format!("e{i}"), false, 1), &r, T0)
            .await
            .unwrap();
    }
    assert_eq!(s.pending("p").await.unwrap(), 40);
    for i in (0..40).step_by(2) {
        let out = s
            .reward_at("p", &format!("e{i}"), None, 1.0, &r, T0 + 1)
            .await
            .unwrap();
        assert_eq!(out, RewardOutcome::Learned("act0".into()));
    }
    let swept = s.sweep("p", &r, T0 + 1000, 1000).await.unwrap();
    assert_eq!(swept.learned.len(), 20);
    assert_eq!(s.pending("p").await.unwrap(), 0);
    // Entries become foldable once their millisecond has passed everywhere.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (all, cursor, epoch) = fold_all(&s, 1000).await;
    let (small, small_cursor, _) = fold_all(&s, 3).await;
    assert_eq!(all.len(), 40);
    assert_eq!(small, all, "every reader folds the same order");
    assert_eq!(small_cursor, cursor);
    let ids: std::collections::BTreeSet<&String> = all.iter().map(|(e, _)| e).collect();
    assert_eq!(ids.len(), 40, "each event once");
    // The events used every shard.
    assert!(cursor.shards().iter().filter(|id| id.ms > 0).count() >= 3);
    // A snapshot at the cursor: a reader from scratch reloads it and reads
    // nothing more; one ahead of it in no shard is refused.
    assert!(s.save_snapshot("p", epoch, b"all", &cursor).await.unwrap());
    assert!(
        !s.save_snapshot("p", epoch, b"again", &cursor)
            .await
            .unwrap()
    );
    let fresh = s.sync("p", None, &Cursor::default(), 100).await.unwrap();
    let snap = fresh.snapshot.expect("reload");
    assert_eq!(
        (snap.blob.as_deref(), &snap.cursor),
        (Some(&b"all"[..]), &cursor)
    );
    assert!(fresh.entries.is_empty());
    // A reset: everyone reloads the fresh model, nothing learned before.
    s.reset("p", b"fresh").await.unwrap();
    let after = s.sync("p", Some(epoch), &cursor, 100).await.unwrap();
    assert_ne!(after.epoch, epoch);
    assert_eq!(after.snapshot.unwrap().blob.as_deref(), Some(&b"fresh"[..]));
    assert!(after.entries.is_empty());
}

#[tokio::test]
async fn a_pending_event_of_a_ten_arm_thirty_two_feature_policy_is_small() {
    let (redis, s) = sharded(1);
    let r = rules(false);
    let x: Vec<f64> = std::iter::once(1.0)
        .chain((0..31).map(|i| ((i * 7919 % 40_000) as f64 - 20_000.0) / 10_000.0))
        .collect();
    let e = EventRecord {
        event_id: "r20261202010101p12345-1-123456".into(),
        slots: vec![Slot {
            action: "a3".into(),
            arm: 3,
            x,
            aux: vec![],
        }],
        deadline_ms: T0 + 3_600_000,
        deferred: false,
        response: vec![0xC2; 60],
    };
    s.record("bench_linucb", &e, &r, T0).await.unwrap();
    let client = ::redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{}:*e:*", redis.prefix))
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 1);
    let blob: Vec<u8> = ::redis::cmd("GET").arg(&keys[0]).query(&mut conn).unwrap();
    // A raw-f64 vector alone would be 256 bytes.
    assert!(blob.len() < 220, "{} bytes", blob.len());
}

#[tokio::test]
async fn the_redis_store_reloads_its_scripts_after_a_script_flush() {
    let redis = Redis::new();
    let client = ::redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_connection().unwrap();
    let () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut conn)
        .unwrap();
    let r = rules(false);
    let e = event("after-flush", false, 1);
    assert_eq!(
        redis.store.record("p", &e, &r, T0).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        redis.store.record("p", &e, &r, T0).await.unwrap(),
        Recorded::Existing(e.response.clone())
    );
    assert_eq!(
        redis
            .store
            .event_policy("after-flush")
            .await
            .unwrap()
            .as_deref(),
        Some("p")
    );
}

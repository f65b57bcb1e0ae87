//! Steady-rate load generator for `bench/soak.sh`: sends decides at a fixed
//! rate (open loop: request `i` is due at `start + i / rate`, whatever the
//! service's speed) and a reward for a fixed fraction of the decided events,
//! for a fixed duration. A decide's latency is measured from when the
//! generator released it (on its 5 ms tick), including any wait for one of
//! the bounded in-flight slots: a service stall fills the slots, and the
//! requests queued behind it count their wait, so a stall shows up in the
//! percentiles instead of silently lowering the rate.
//!
//! Prints, every window (default 10 s, by completion time): requests,
//! errors, p50/p99/max of decide and reward; the server's RSS
//! (`/proc/<pid>/status`) at the start, every minute and at the end; a
//! summary. Writes the acknowledged decisions' and rewards' event ids, one a
//! line, for the caller to compare with the log. Exits 1 if any request
//! failed.

use clap::Parser;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Steady-rate decide + reward load.
#[derive(Parser, Debug)]
struct Args {
    /// The service, e.g. `http://127.0.0.1:18090`.
    #[arg(long)]
    url: String,
    /// Policy to decide with (its context: numbers `f01`…`f31`).
    #[arg(long, default_value = "bench_linucb")]
    policy: String,
    /// Decides per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Fraction of decided events that get a reward (every n-th event, so
    /// the count is exact).
    #[arg(long, default_value_t = 0.5)]
    reward_fraction: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Seconds per latency window.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Most requests in flight (beyond, due requests wait, and their wait
    /// counts in their latency).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// The server's pid, for its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Event ids are `<prefix>-<n>`.
    #[arg(long, default_value = "soak")]
    prefix: String,
    /// Where to write acknowledged decisions' event ids.
    #[arg(long)]
    decided_out: PathBuf,
    /// Where to write acknowledged rewards' event ids.
    #[arg(long)]
    rewarded_out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Decide,
    Reward,
}

/// Everything measured, shared by the request tasks.
#[derive(Default)]
struct Record {
    /// `(window index by completion, kind, latency µs)`.
    samples: Vec<(u64, Kind, u32)>,
    /// Failures by `(kind, what)`.
    errors: BTreeMap<(Kind, String), u64>,
    decided: Vec<String>,
    rewarded: Vec<String>,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// One window's line: count, errors, p50/p99/max per kind.
fn window_line(record: &Record, w: u64, width: u64) -> String {
    let mut line = format!("{:>5}s", (w + 1) * width);
    for kind in [Kind::Decide, Kind::Reward] {
        let mut v: Vec<u32> = record
            .samples
            .iter()
            .filter(|(sw, k, _)| *sw == w && *k == kind)
            .map(|(_, _, l)| *l)
            .collect();
        v.sort_unstable();
        line += &format!(
            " | {:>6} {:>7.2} {:>7.2} {:>8.2}",
            v.len(),
            ms(quantile(&v, 0.5)),
            ms(quantile(&v, 0.99)),
            ms(v.last().copied().unwrap_or(0))
        );
    }
    line
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let record = Arc::new(Mutex::new(Record::default()));
    let permits = Arc::new(Semaphore::new(args.max_in_flight));
    let reward_every = if args.reward_fraction > 0.0 {
        (1.0 / args.reward_fraction).round().max(1.0) as u64
    } else {
        0
    };
    let width = args.window.max(1);
    let total = (args.rate * args.duration as f64).round() as u64;
    let rss_start = rss_kib(args.pid);
    println!(
        "soak: {} decides/s, a reward for 1 in {reward_every}, {} s ({total} decides), \
         windows of {width} s; server RSS at start {} KiB",
        args.rate,
        args.duration,
        rss_start.map_or("?".into(), |r| r.to_string())
    );
    println!(
        "{:>6} | {:>6} {:>7} {:>7} {:>8} | {:>6} {:>7} {:>7} {:>8}",
        "t", "decide", "p50 ms", "p99 ms", "max ms", "reward", "p50 ms", "p99 ms", "max ms"
    );

    let start = Instant::now();
    let mut rss = vec![(0u64, rss_start)];
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent: u64 = 0;
    let mut printed: u64 = 0;
    while sent < total {
        tick.tick().await;
        let elapsed = start.elapsed();
        let due = ((elapsed.as_secs_f64() * args.rate) as u64).min(total);
        while sent < due {
            let i = sent;
            sent += 1;
            let client = client.clone();
            let record = record.clone();
            let permits = permits.clone();
            let url = args.url.clone();
            let policy = args.policy.clone();
            let event_id = format!("{}-{i}", args.prefix);
            let reward = reward_every > 0 && i.is_multiple_of(reward_every);
            tasks.spawn(async move {
                let released = Instant::now();
                let _permit = permits.acquire_owned().await.expect("never closed");
                let context: serde_json::Map<String, serde_json::Value> = (1..=31)
                    .map(|f| {
                        // Deterministic, varied features.
                        let v = ((i * 31 + f) as f64 * 0.618_033_988_7).sin();
                        (format!("f{f:02}"), json!(v))
                    })
                    .collect();
                let body = json!({"policy": policy, "event_id": event_id, "context": context});
                let ok = call(&client, &format!("{url}/v1/decide"), &body).await;
                let done = Instant::now();
                let latency = done.duration_since(released);
                {
                    let mut r = record.lock().unwrap();
                    let w = done.duration_since(start).as_secs() / width;
                    match &ok {
                        Ok(()) => {
                            r.samples
                                .push((w, Kind::Decide, latency.as_micros() as u32));
                            r.decided.push(event_id.clone());
                        }
                        Err(e) => *r.errors.entry((Kind::Decide, e.clone())).or_default() += 1,
                    }
                }
                if ok.is_err() || !reward {
                    return;
                }
                let body =
                    json!({"event_id": event_id, "policy": policy, "reward": u8::from(i.is_multiple_of(3))});
                let sent_at = Instant::now();
                let ok = call(&client, &format!("{url}/v1/reward"), &body).await;
                let done = Instant::now();
                let mut r = record.lock().unwrap();
                let w = done.duration_since(start).as_secs() / width;
                match ok {
                    Ok(()) => {
                        let latency = done.duration_since(sent_at).as_micros() as u32;
                        r.samples.push((w, Kind::Reward, latency));
                        r.rewarded.push(event_id);
                    }
                    Err(e) => *r.errors.entry((Kind::Reward, e)).or_default() += 1,
                }
            });
        }
        // Reap finished tasks so the set does not grow for the whole run.
        while tasks.try_join_next().is_some() {}
        let secs = start.elapsed().as_secs();
        if secs / width > printed {
            // The window just closed: requests completing after this were
            // counted in the next one.
            let r = record.lock().unwrap();
            println!("{}", window_line(&r, printed, width));
            printed += 1;
        }
        if secs >= 60 * rss.len() as u64 {
            let now = rss_kib(args.pid);
            println!(
                "       server RSS at {secs} s: {} KiB",
                now.map_or("?".into(), |r| r.to_string())
            );
            rss.push((secs, now));
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let r = record.lock().unwrap();
    let last = elapsed.as_secs() / width;
    for w in printed..=last {
        println!("{}", window_line(&r, w, width));
    }
    if rss.last().is_none_or(|(t, _)| *t < elapsed.as_secs()) {
        rss.push((elapsed.as_secs(), rss_kib(args.pid)));
    }

    let errors: u64 = r.errors.values().sum();
    let all = |kind| {
        let mut v: Vec<u32> = r
            .samples
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, l)| *l)
            .collect();
        v.sort_unstable();
        v
    };
    let (d, w) = (all(Kind::Decide), all(Kind::Reward));
    println!(
        "\nsoak summary: {} s, {} requests ({} decides, {} rewards), {errors} errors, \
         {:.0} decides/s achieved",
        elapsed.as_secs(),
        d.len() + w.len() + errors as usize,
        d.len(),
        w.len(),
        d.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  decide p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(quantile(&d, 0.5)),
        ms(quantile(&d, 0.99)),
        ms(quantile(&d, 0.999)),
        ms(d.last().copied().unwrap_or(0))
    );
    println!(
        "  reward p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(quantile(&w, 0.5)),
        ms(quantile(&w, 0.99)),
        ms(quantile(&w, 0.999)),
        ms(w.last().copied().unwrap_or(0))
    );
    let rss_text: Vec<String> = rss
        .iter()
        .map(|(t, k)| format!("{t}s={}", k.map_or("?".into(), |k| format!("{k}KiB"))))
        .collect();
    println!("  server RSS: {}", rss_text.join(" "));
    for ((kind, what), n) in &r.errors {
        println!("  error: {kind:?} {what}: {n}");
    }
    let write = |path: &PathBuf, ids: &[String]| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("ids file"));
        for id in ids {
            writeln!(f, "{id}").expect("ids written");
        }
        f.flush().expect("ids flushed");
    };
    write(&args.decided_out, &r.decided);
    write(&args.rewarded_out, &r.rewarded);
    if errors == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// One POST; `Err` names the failure (status and error code, or transport).
async fn call(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<(), String> {
    match client.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => {
            r.bytes().await.map(drop).map_err(|e| format!("body: {e}"))
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            Err(format!(
                "{status} {}",
                body["error"]["code"].as_str().unwrap_or("?")
            ))
        }
        Err(e) => Err(if e.is_timeout() {
            "timeout".into()
        } else if e.is_connect() {
            "connect".into()
        } else {
            format!("transport: {e}")
        }),
    }
}

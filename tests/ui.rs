//! The live page in a real browser: the real `nudge serve` binary on the
//! embedded defaults (in-process store, SQLite, the example policies of
//! `policies/`), decisions and rewards over HTTP, and `tests/ui/check.mjs`
//! driving Debian's headless Chromium with `playwright-core` (never a
//! downloaded browser). The script checks that the page lists every policy
//! and that its decisions figure changes after this test sends more, and
//! saves `target/ui-artifacts/dashboard.png`; then, on a second service
//! with API keys, that the page asks for a `read` key and works with one
//! typed in or given as `#key=…`.
//!
//! Needs `node` and `/usr/bin/chromium` (or `CHROMIUM`); installs
//! `playwright-core` into `tests/ui/node_modules` with `npm ci` if missing.
//! Without node or Chromium the test prints why and passes, unless
//! `NUDGE_UI_REQUIRED` is set (`scripts/test.sh` sets it after installing
//! them), when it fails.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::servers::NudgeProcess;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const POLICIES: &str = "push_send,notification_channel,discovery_ranking";
/// The `read` key of the keyed service.
const READ_KEY: &str = "viewer-0123456789abcdef";

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn runs(cmd: &str, args: &[&str], dir: &Path) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the browser check cannot run here, if it cannot (after installing
/// `playwright-core` if npm can).
fn missing_tools() -> Option<String> {
    if !chromium().exists() {
        return Some(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            chromium().display()
        ));
    }
    if !runs("node", &["--version"], &ui_dir()) {
        return Some("no `node` on PATH (apt-get install nodejs npm)".into());
    }
    if !ui_dir().join("node_modules/playwright-core").exists()
        && !runs("npm", &["ci", "--no-audit", "--no-fund"], &ui_dir())
    {
        return Some("playwright-core is not installed and `npm ci` in tests/ui failed".into());
    }
    None
}

fn push(i: usize) -> Value {
    json!({
        "policy": "push_send",
        "event_id": format!("ui-push-{i}"),
        // Fifty users: repeats meet the policy's gap and caps.
        "user": format!("u-{}", i % 50),
        "context": {"hour_of_day": (i % 24) as f64, "platform": "ios"},
    })
}

fn channel(i: usize) -> Value {
    json!({
        "policy": "notification_channel",
        "event_id": format!("ui-channel-{i}"),
        "context": {"notification_type": "reminder", "email_open_rate_30d": 0.2},
    })
}

/// Sends decisions `range` of both policies and rewards every other one.
async fn traffic(nudge: &NudgeProcess, range: std::ops::Range<usize>) {
    for i in range {
        for body in [push(i), channel(i)] {
            let (status, d) = nudge.post("/v1/decide", &body).await;
            assert_eq!(status, 200, "{body} -> {d}");
            if i % 2 == 0 {
                let (status, r) = nudge
                    .post(
                        "/v1/reward",
                        &json!({"event_id": d["event_id"], "signals": {"opened": (i % 4 == 0) as u8}}),
                    )
                    .await;
                assert_eq!(status, 202, "{r}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_lists_the_policies_and_its_figures_follow_the_traffic() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var_os("NUDGE_UI_REQUIRED").is_none(),
            "the browser check must run (NUDGE_UI_REQUIRED) but cannot: {why}"
        );
        eprintln!("SKIPPED tests/ui.rs (the live page in a browser): {why}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        (
            "NUDGE_POLICIES",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        ),
        ("NUDGE_DATA_DIR", dir.path().join("data")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .chain([(
        "NUDGE_DATABASE_URL".to_string(),
        format!("sqlite://{}", dir.path().join("nudge.db").display()),
    )])
    .collect();
    let nudge = NudgeProcess::spawn(&env, dir.path()).await;
    traffic(&nudge, 0..20).await;
    // A second service, with API keys: the page must ask for a `read` key.
    let keyed_dir = tempfile::tempdir().unwrap();
    let mut keyed_env = env.clone();
    keyed_env.insert(
        "NUDGE_DATA_DIR".into(),
        keyed_dir.path().join("data").display().to_string(),
    );
    keyed_env.insert(
        "NUDGE_DATABASE_URL".into(),
        format!("sqlite://{}", keyed_dir.path().join("nudge.db").display()),
    );
    keyed_env.insert("NUDGE_API_KEYS".into(), format!("viewer:read:{READ_KEY}"));
    let keyed = NudgeProcess::spawn(&keyed_env, keyed_dir.path()).await;

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-artifacts");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut script = tokio::process::Command::new("node")
        .arg(ui_dir().join("check.mjs"))
        .arg(format!("{}/", nudge.address))
        .arg(POLICIES)
        .arg(&screenshot)
        .arg(format!("{}/", keyed.address))
        .arg(READ_KEY)
        .env("CHROMIUM", chromium())
        .current_dir(ui_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = script.stdin.take().unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser script answers within a minute")
            .unwrap()
            .unwrap_or_else(|| "FAIL the script ended".into())
    };

    let read = next().await;
    let before: u64 = match read.strip_prefix("READ push_send ") {
        Some(n) => n.parse().unwrap(),
        None => panic!("browser: {read}\nnudge stderr:\n{}", nudge.stderr()),
    };
    assert!(before > 0 && before <= 20, "{read}");
    traffic(&nudge, 20..35).await;
    stdin.write_all(b"SENT\n").await.unwrap();
    let changed = next().await;
    let after: Vec<u64> = match changed.strip_prefix("CHANGED ") {
        Some(rest) => rest.split(' ').map(|n| n.parse().unwrap()).collect(),
        None => panic!("browser: {changed}"),
    };
    assert_eq!(after[0], before);
    assert!(after[1] > before && after[1] <= 35, "{changed}");
    let keyed_page = next().await;
    assert_eq!(keyed_page, "KEYED", "browser, keyed service: {keyed_page}");
    let done = next().await;
    assert_eq!(done, "OK", "browser: {done}");
    assert!(script.wait().await.unwrap().success());
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "the screenshot {} is all but empty",
        screenshot.display()
    );
    eprintln!(
        "browser check passed in {:.1} s; screenshot: {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
}

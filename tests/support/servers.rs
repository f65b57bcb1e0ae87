//! Servers a fault test owns, so it can stop and kill them without touching
//! the machine's shared instances: a private `redis-server`, a private
//! PostgreSQL cluster, the real `nudge serve` binary as a subprocess, and a
//! bounded concurrent load driver that records every acknowledged decision
//! and reward (to compare with the log and the store afterwards).
//!
//! Everything listens on 127.0.0.1 on a free port picked here, lives in a
//! temporary directory, and is killed and removed on drop (also when the
//! test panics).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the OS's choice for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Runs a command to completion; panics with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Sends `signal` to a process we started.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is of a
    // child this harness spawned and has not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Waits (polling, without blocking the runtime) for a child to exit.
async fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a TCP connection to `port` succeeds (or panics).
fn wait_listening(port: u16, limit: Duration, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < limit,
            "{what} did not listen on {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ Redis

/// A private `redis-server` on a free port, its files in a temp dir.
pub struct RedisServer {
    /// Its port (kept across [`RedisServer::restart`]).
    pub port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence (`--save "" --appendonly no`): a restart
    /// starts empty.
    pub fn start() -> RedisServer {
        Self::launch(false)
    }

    /// A server that keeps its data across [`RedisServer::stop`] /
    /// [`RedisServer::kill`] and [`RedisServer::restart`]: an append-only
    /// file fsynced on every write (`--appendfsync always`), so even a
    /// `kill -9` loses nothing Redis acknowledged.
    pub fn start_persistent() -> RedisServer {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("nudge-redis-")
            .tempdir()
            .unwrap();
        let mut server = RedisServer {
            port: free_port(),
            dir,
            persistent,
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A client (for inspecting keys).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port and directory (a persistent server
    /// reloads its data); waits until it answers `PING`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let appendonly = if self.persistent { "yes" } else { "no" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let client = self.client();
        let started = Instant::now();
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not answer on {} (log: {})",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it cleanly (`SHUTDOWN`; a persistent server has written every
    /// acknowledged command to its append-only file), and waits for the
    /// process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let verb = if self.persistent { "SAVE" } else { "NOSAVE" };
        if let Ok(mut conn) = self.client().get_connection() {
            // The connection drops as the server exits: the reply is an error.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg(verb).query(&mut conn);
        }
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------- PostgreSQL

/// A private PostgreSQL cluster (`initdb` + `pg_ctl`) on a free port, its
/// data and socket in a temp dir owned by the `postgres` user (PostgreSQL
/// refuses to run as root). Trust authentication, `fsync=off`: made to be
/// started and stopped quickly, never to keep data across a machine crash.
pub struct PgCluster {
    /// Its port (kept across [`PgCluster::restart`]).
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

/// Runs a PostgreSQL tool as the `postgres` user.
fn as_postgres(tool: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", tool]);
    cmd
}

impl PgCluster {
    /// Initialises and starts a cluster; waits until it accepts connections.
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("nudge-pg-")
            .tempdir()
            .unwrap();
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path()));
        run(as_postgres("initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]));
        let mut cluster = PgCluster {
            port: free_port(),
            dir,
            running: false,
        };
        cluster.restart();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts it (again) on the same port and data directory; returns once
    /// it accepts connections.
    pub fn restart(&mut self) {
        assert!(!self.running, "the cluster is already running");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]));
        self.running = true;
    }

    /// Stops it (`pg_ctl stop -m fast`: sessions are terminated, as in a
    /// planned outage) and waits until it is down.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Stops it like a crash (`-m immediate`: no shutdown checkpoint).
    pub fn stop_immediate(&mut self) {
        self.stop_with("immediate");
    }

    fn stop_with(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"]));
        self.running = false;
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let admin = sqlx::PgPool::connect(&self.url("postgres")).await.unwrap();
        // `name` is the test's own identifier, not input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
    }
}

// ------------------------------------------------------------------ nudge

/// The real `nudge serve` binary, run as a subprocess on a free port with
/// `NUDGE_*` settings from the environment given (inherited `NUDGE_*`
/// variables are removed, and no config file is read). Its stderr goes to a
/// file ([`NudgeProcess::stderr`]).
pub struct NudgeProcess {
    /// Its port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    child: Child,
    stderr_path: PathBuf,
}

impl NudgeProcess {
    /// Spawns `nudge serve` with `env` (`NUDGE_BIND` is set here) and waits
    /// (up to a minute) until `/healthz` answers. `log_dir` receives
    /// `nudge-<port>.stderr`.
    pub async fn spawn(env: &BTreeMap<String, String>, log_dir: &Path) -> NudgeProcess {
        let port = free_port();
        let stderr_path = log_dir.join(format!("nudge-{port}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nudge"));
        cmd.arg("serve");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NUDGE_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("NUDGE_CONFIG", log_dir.join("no-such-config.toml"))
            .env("RUST_LOG", "info")
            .envs(env)
            .env("NUDGE_BIND", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("the nudge binary runs");
        let mut process = NudgeProcess {
            port,
            address: format!("http://127.0.0.1:{port}"),
            child,
            stderr_path,
        };
        process.wait_healthy().await;
        process
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", self.address);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nudge exited during start ({status}):\n{}", self.stderr());
            }
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nudge did not answer /healthz within a minute:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.id(), sig);
    }

    /// Sends SIGTERM (graceful stop: drain, flush, exit).
    pub fn sigterm(&self) {
        signal(self.child.id(), libc::SIGTERM);
    }

    /// SIGSTOP: the process stays, doing nothing, until [`Self::resume`].
    pub fn pause(&self) {
        signal(self.child.id(), libc::SIGSTOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        signal(self.child.id(), libc::SIGCONT);
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for it to exit; `None` if it is still running.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit).await
    }

    /// GETs JSON from it.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.address))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// POSTs JSON; returns the status and the JSON body (Null if none).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.address))
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl Drop for NudgeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9();
        }
    }
}

// ------------------------------------------------------------------- load

/// What the load driver sends.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Service addresses (`http://127.0.0.1:<port>`); task `i` sends its
    /// decides to `targets[i % len]`.
    pub targets: Vec<String>,
    /// Concurrent tasks (each has one request in flight at a time).
    pub tasks: usize,
    /// The policy decided with; its context must take `{"x": [3 numbers]}`.
    pub policy: String,
    /// Reward every n-th decided event of a task (0: no rewards).
    pub reward_every: u64,
    /// The reward value sent.
    pub reward: f64,
    /// Send a task's rewards to the next target (`targets[(i + 1) % len]`)
    /// rather than the one that decided: exercises the shared store.
    pub reward_elsewhere: bool,
    /// Retry a request that got no HTTP answer on the other targets.
    pub failover: bool,
    /// Pause after each decide (and its reward) per task: bounds the rate.
    pub pause: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Event ids are `<prefix>-<task>-<seq>`.
    pub prefix: String,
}

impl LoadConfig {
    /// `tasks` tasks deciding with `policy` on `targets`, rewarding every
    /// second event with 1.0 on the same target, 2 ms apart.
    pub fn new(targets: Vec<String>, tasks: usize, policy: &str) -> LoadConfig {
        LoadConfig {
            targets,
            tasks,
            policy: policy.into(),
            reward_every: 2,
            reward: 1.0,
            reward_elsewhere: false,
            failover: false,
            pause: Duration::from_millis(2),
            timeout: Duration::from_secs(30),
            prefix: format!("ld{}", uuid::Uuid::now_v7().simple()),
        }
    }
}

/// Which request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /v1/decide`.
    Decide,
    /// `POST /v1/reward`.
    Reward,
}

/// One request that did not get a 2xx.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Which.
    pub op: Op,
    /// To where.
    pub target: String,
    /// The event.
    pub event_id: String,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The error code of the body, or the transport error.
    pub error: String,
    /// When it was sent.
    pub sent_at: Instant,
}

/// Everything the load driver saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Event ids of decides answered 200, with the target that answered.
    pub decided: Vec<(String, String)>,
    /// Event ids of rewards answered 202, with the target that answered.
    pub rewarded: Vec<(String, String)>,
    /// Rewards whose first attempt got no answer and whose failover retry
    /// found them already learned (409 `already_rewarded`): the first
    /// attempt was applied before its replica died.
    pub rewarded_before_failover: Vec<(String, String)>,
    /// Requests acknowledged only by a failover retry.
    pub failed_over: Vec<(Op, String)>,
    /// Every other outcome.
    pub failures: Vec<Failure>,
}

impl LoadReport {
    /// The acknowledged decisions' event ids.
    pub fn decided_ids(&self) -> std::collections::BTreeSet<String> {
        self.decided.iter().map(|(e, _)| e.clone()).collect()
    }

    /// The acknowledged rewards' event ids.
    pub fn rewarded_ids(&self) -> std::collections::BTreeSet<String> {
        self.rewarded.iter().map(|(e, _)| e.clone()).collect()
    }

    /// Failures of one kind.
    pub fn failures_of(&self, op: Op) -> Vec<&Failure> {
        self.failures.iter().filter(|f| f.op == op).collect()
    }
}

/// A running load: tasks send until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Decisions acknowledged so far (all tasks).
    pub acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts the tasks.
    pub fn start(config: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let config = Arc::new(config);
        let tasks = (0..config.tasks)
            .map(|i| tokio::spawn(load_task(config.clone(), i, stop.clone(), acked.clone())))
            .collect();
        Load { stop, acked, tasks }
    }

    /// Waits until at least `n` decisions were acknowledged (panics after
    /// `limit`).
    pub async fn wait_acked(&self, n: u64, limit: Duration) {
        let started = Instant::now();
        while self.acked.load(Ordering::Relaxed) < n {
            assert!(
                started.elapsed() < limit,
                "only {} of {n} decisions acknowledged within {limit:?}",
                self.acked.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells the tasks to stop after their current request, and collects
    /// what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for t in self.tasks {
            let r = t.await.expect("a load task panicked");
            report.decided.extend(r.decided);
            report.rewarded.extend(r.rewarded);
            report
                .rewarded_before_failover
                .extend(r.rewarded_before_failover);
            report.failed_over.extend(r.failed_over);
            report.failures.extend(r.failures);
        }
        report
    }
}

/// What one request came back with.
enum Outcome {
    Ok,
    Failed(Option<u16>, String),
}

async fn send(client: &reqwest::Client, url: String, body: &Value, timeout: Duration) -> Outcome {
    let sent = client.post(url).timeout(timeout).json(body).send().await;
    match sent {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(None, format!("reading the body: {e}")),
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("?").to_owned();
            Outcome::Failed(Some(status), code)
        }
        Err(e) => Outcome::Failed(None, transport_error(&e)),
    }
}

/// A short name for a transport error: its kind and innermost cause
/// (`connect: Connection refused`, `send: connection closed before message
/// completed`, …).
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "send"
    };
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{kind}: {cause}")
}

/// Sends `body` to `path` on target `first`; with failover, a transport
/// failure (no HTTP answer) is retried once on each other target in turn,
/// as a client behind a load balancer would. Returns the last outcome, the
/// target it came from, and whether it came from a failover.
async fn send_failover(
    client: &reqwest::Client,
    config: &LoadConfig,
    first: usize,
    path: &str,
    body: &Value,
) -> (Outcome, usize, bool) {
    let n = config.targets.len();
    let attempts = if config.failover { n } else { 1 };
    let mut last = (Outcome::Failed(None, "not sent".into()), first, false);
    for k in 0..attempts {
        let t = (first + k) % n;
        let url = format!("{}{path}", config.targets[t]);
        let outcome = send(client, url, body, config.timeout).await;
        let transport = matches!(outcome, Outcome::Failed(None, _));
        last = (outcome, t, k > 0);
        if !transport {
            break;
        }
    }
    last
}

async fn load_task(
    config: Arc<LoadConfig>,
    i: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> LoadReport {
    let client = reqwest::Client::new();
    let n = config.targets.len();
    let decide_target = i % n;
    let reward_target = if config.reward_elsewhere {
        (i + 1) % n
    } else {
        decide_target
    };
    let mut report = LoadReport::default();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let event_id = format!("{}-{i}-{seq}", config.prefix);
        // A context that varies, deterministically, with the event.
        let t = (seq as f64 * 0.37 + i as f64).sin();
        let body = json!({
            "policy": config.policy,
            "event_id": event_id,
            "context": {"x": [t, 1.0 - t, 0.5]},
        });
        let sent_at = Instant::now();
        match send_failover(&client, &config, decide_target, "/v1/decide", &body).await {
            (Outcome::Ok, t, failed_over) => {
                acked.fetch_add(1, Ordering::Relaxed);
                if failed_over {
                    report.failed_over.push((Op::Decide, event_id.clone()));
                }
                report
                    .decided
                    .push((event_id.clone(), config.targets[t].clone()));
            }
            (Outcome::Failed(status, error), t, _) => {
                report.failures.push(Failure {
                    op: Op::Decide,
                    target: config.targets[t].clone(),
                    event_id,
                    status,
                    error,
                    sent_at,
                });
                // A dead target refuses at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        if config.reward_every > 0 && seq.is_multiple_of(config.reward_every) {
            let body = json!({
                "event_id": event_id,
                "policy": config.policy,
                "reward": config.reward,
            });
            let sent_at = Instant::now();
            match send_failover(&client, &config, reward_target, "/v1/reward", &body).await {
                (Outcome::Ok, t, failed_over) => {
                    if failed_over {
                        report.failed_over.push((Op::Reward, event_id.clone()));
                    }
                    report.rewarded.push((event_id, config.targets[t].clone()));
                }
                // The first attempt may have been applied before its replica
                // died: the retry then finds the reward already learned.
                (Outcome::Failed(Some(409), error), t, true) if error == "already_rewarded" => {
                    report.failed_over.push((Op::Reward, event_id.clone()));
                    report
                        .rewarded_before_failover
                        .push((event_id, config.targets[t].clone()));
                }
                (Outcome::Failed(status, error), t, _) => {
                    report.failures.push(Failure {
                        op: Op::Reward,
                        target: config.targets[t].clone(),
                        event_id,
                        status,
                        error,
                        sent_at,
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if !config.pause.is_zero() {
            tokio::time::sleep(config.pause).await;
        }
    }
    report
}

// ---------------------------------------------------------- Redis Cluster

/// A private Redis Cluster: `masters` masters with `replicas` replicas
/// each, every node a `redis-server --cluster-enabled yes` on a free port
/// below 55535 (a node also listens on port + 10000 for the cluster bus),
/// joined by `redis-cli --cluster create`. A short node timeout (1 s) makes
/// a killed master's replica take over in a few seconds.
pub struct RedisCluster {
    /// Every node, masters first as created.
    pub nodes: Vec<ClusterNode>,
    /// Replicas per master.
    replicas: usize,
}

/// One node of a [`RedisCluster`].
pub struct ClusterNode {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClusterNode {
    fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(10), "cluster node");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its port and directory: it rejoins the cluster
    /// (a killed master comes back as a replica of the one that replaced it).
    pub fn restart(&mut self) {
        self.start();
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap()
    }

    /// `CLUSTER INFO`/`INFO` field `name` of this node.
    pub fn info_field(&self, section: &str, name: &str) -> Option<String> {
        let mut conn = self.client().get_connection().ok()?;
        let text: String = if section == "cluster" {
            redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?
        } else {
            redis::cmd("INFO").arg(section).query(&mut conn).ok()?
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
    }

    /// Whether it runs and is a master.
    pub fn is_master(&self) -> bool {
        self.child.is_some() && self.info_field("replication", "role").as_deref() == Some("master")
    }

    /// Keys it holds.
    pub fn dbsize(&self) -> u64 {
        let mut conn = self.client().get_connection().unwrap();
        redis::cmd("DBSIZE").query(&mut conn).unwrap()
    }
}

/// A free port `p < 55535` with `p + 10000` free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let mut nodes: Vec<ClusterNode> = (0..masters * (1 + replicas))
            .map(|_| ClusterNode {
                port: free_cluster_port(),
                dir: tempfile::Builder::new()
                    .prefix("nudge-cluster-")
                    .tempdir()
                    .unwrap(),
                child: None,
            })
            .collect();
        for n in &mut nodes {
            n.start();
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes");
        run(&mut create);
        let cluster = RedisCluster { nodes, replicas };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// The seed URLs, comma-separated (`NUDGE_REDIS_URL` with
    /// `NUDGE_REDIS_CLUSTER=true`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster client (for inspecting keys).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| format!("redis://127.0.0.1:{}", n.port))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    /// Waits until every running node says `cluster_state:ok` and every
    /// master's replicas are online (panics after `limit`).
    pub fn wait_ok(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            // Every node sees every slot served, and every master has its
            // replicas attached and in sync (a write waits for them).
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.info_field("cluster", "cluster_state").as_deref() == Some("ok"))
                && self.nodes.iter().filter(|n| n.is_master()).all(|n| {
                    (0..self.replicas).all(|i| {
                        n.info_field("replication", &format!("slave{i}"))
                            .is_some_and(|v| v.contains("state=online"))
                    })
                });
            if ok {
                return;
            }
            assert!(started.elapsed() < limit, "cluster not ok within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Indices of the running masters.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_master())
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

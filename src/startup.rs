//! Building and running the service from [`Settings`]: everything a test
//! needs to start its own instance on port 0.

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::log::{DecisionLog, LogSettings};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError, load_paths};
use crate::recovery;
use crate::runtime::PolicyRuntime;
use crate::store::outbox::{FSYNC_EVERY, Outbox};
use crate::store::{MemoryStore, RedisStore, Store, StoreError};
use actix_web::dev::Service;
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::ConnectionType;
use actix_web::{App, HttpServer, web};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Policy files failed validation (every error is listed).
    #[error("invalid policy files:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<PolicyError>),
    /// No policy file was found.
    #[error("no policy files under {0}")]
    NoPolicies(String),
    /// The API keys or rate limits are misconfigured.
    #[error("API keys: {0}")]
    Keys(#[from] crate::http::auth::KeyError),
    /// The store could not be set up (a malformed URL).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The decision log could not be set up.
    #[error("decision log: {0}")]
    Log(String),
    /// Binding the listener failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// The SIGHUP handler (policy reload) could not be installed.
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// A built, bound, not yet running service.
pub struct Application {
    /// Waits for SIGTERM / SIGINT (aborted once the server has stopped).
    signals: JoinHandle<()>,
    server: Server,
    port: u16,
    state: web::Data<AppState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Loads the policies, connects the store and the log, binds the
    /// listener (`bind` may use port 0) and starts the learner tasks.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let auth = crate::http::auth::Auth::from_settings(&settings)?;
        let (specs, errors) = load_paths(std::slice::from_ref(&settings.policies));
        if !errors.is_empty() {
            return Err(StartupError::Policies(errors));
        }
        if specs.is_empty() {
            return Err(StartupError::NoPolicies(
                settings.policies.display().to_string(),
            ));
        }
        let retention = Duration::from_secs(settings.retention_secs);
        let policies: BTreeMap<String, Arc<PolicyRuntime>> = specs
            .into_iter()
            .map(|spec| {
                (
                    spec.id.clone(),
                    Arc::new(PolicyRuntime::new(Policy::new(spec), retention)),
                )
            })
            .collect();
        let (store, embedded) = match &settings.redis_url {
            Some(urls) => (
                Store::new(RedisStore::with_config(&settings.redis_config(urls))?),
                None,
            ),
            None => {
                let memory = match &settings.state_path {
                    Some(path) => MemoryStore::load(path)?,
                    None => MemoryStore::new(),
                };
                (Store::new(memory.clone()), Some(memory))
            }
        };
        let log = DecisionLog::start(&LogSettings {
            database_url: settings.database_url.clone(),
            data_dir: settings.data_dir.clone(),
            batch_size: settings.log_batch_size,
            flush_interval: Duration::from_millis(settings.log_flush_ms),
            queue_capacity: settings.log_queue,
            migrate: settings.migrate,
        })
        .await
        .map_err(|e| StartupError::Log(e.to_string()))?;
        let outbox = Outbox::open(&settings.data_dir.join("outbox"), settings.outbox_max_ops)
            .map_err(|e| StartupError::Log(format!("outbox: {e}")))?;
        let metrics = Metrics::new();
        let state = web::Data::new(AppState {
            policies: arc_swap::ArcSwap::from_pointee(crate::service::PolicySet {
                generation: 0,
                live: policies,
                removed: Default::default(),
            }),
            reloading: tokio::sync::Mutex::new(()),
            reload_mismatch: std::sync::Mutex::new(None),
            store,
            log,
            metrics,
            settings: settings.clone(),
            auth,
            store_healthy: AtomicBool::new(true),
            store_failed_at_ms: AtomicI64::new(0),
            draining: AtomicBool::new(false),
            outbox,
            clock: crate::clock::Clock::system(),
            embedded,
            replica: crate::monitor::replica_name(settings.replica.as_deref()),
            started_ms: crate::service::unix_ms(),
        });
        // Load the shared models before taking traffic (best effort: a store
        // that is down only means starting from the prior, degraded).
        for rt in state.policies.load_full().live.values() {
            let synced = rt.sync(&state.store, &state.metrics).await;
            state.store_result("sync", &synced);
        }
        // Take (or publish) the deployment's policy set generation, so a
        // reload on any replica reaches this one (best effort, as above:
        // the learner retries while the store is down).
        let adopted = crate::service::reload::adopt(&state).await;
        state.store_result("policy_set", &adopted);

        // Listen for SIGHUP before the first request can be answered: a
        // SIGHUP before the handler exists would end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartupError::Signal)?;
        let listener = TcpListener::bind(&settings.bind)
            .map_err(|e| StartupError::Bind(settings.bind.clone(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(settings.bind.clone(), e))?
            .port();
        let data = state.clone();
        let mut server = HttpServer::new(move || {
            let draining = data.clone();
            App::new()
                .app_data(data.clone())
                .wrap_fn(move |req, srv| {
                    let res = srv.call(req);
                    let draining = draining.draining.load(Ordering::Relaxed);
                    async move {
                        let mut res = res.await?;
                        if draining {
                            // Tell keep-alive clients not to send another
                            // request on this connection: it will close.
                            res.response_mut()
                                .head_mut()
                                .set_connection_type(ConnectionType::Close);
                        }
                        Ok(res)
                    }
                })
                .configure(http::routes)
        })
        .listen(listener)
        .map_err(|e| StartupError::Bind(settings.bind.clone(), e))?
        // SIGTERM / SIGINT are handled below: drain first, then stop.
        .disable_signals()
        .shutdown_timeout(30);
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let server = server.run();
        let signals = tokio::spawn(stop_on_signal(
            state.clone(),
            server.handle(),
            Duration::from_millis(settings.drain_ms),
        ));

        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(reload_on_hangup(state.clone(), hangup, stopped.clone())),
            tokio::spawn(learner(state.clone(), stopped.clone())),
            tokio::spawn(sweeper(state.clone(), stopped.clone())),
            tokio::spawn(replayer(state.clone(), stopped)),
        ];
        tracing::info!(
            port,
            store = state.store.kind(),
            policies = state.policies.load().live.len(),
            "nudge listening"
        );
        Ok(Application {
            signals,
            server,
            port,
            state,
            stop,
            tasks,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The service's clock (tests set it).
    pub fn clock(&self) -> crate::clock::Clock {
        self.state.clock.clone()
    }

    /// A handle to stop the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGTERM/SIGINT or the handle), then drains:
    /// in-flight requests finish, the learner folds and snapshots what it
    /// has, and the log flushes its queue.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.signals.abort();
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for rt in self.state.policies.load_full().live.values() {
            let _ = rt.sync(&self.state.store, &self.state.metrics).await;
            let _ = rt.snapshot(&self.state.store, Duration::ZERO, true).await;
        }
        save_state(&self.state).await;
        self.state.log.shutdown().await;
        tracing::info!("nudge stopped");
        served
    }
}

/// On SIGTERM or SIGINT: drain, then stop. For `drain` the service keeps
/// answering, but `/readyz` says 503 `draining` (a load balancer takes the
/// replica out) and every response carries `Connection: close`, so
/// keep-alive clients open new connections elsewhere instead of sending a
/// request on a connection the stop would cut. Then the listener closes,
/// requests in flight finish, and [`Application::run_until_stopped`] flushes.
async fn stop_on_signal(state: web::Data<AppState>, server: ServerHandle, drain: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM / SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "stopping: draining first"
    );
    state.draining.store(true, Ordering::Relaxed);
    tokio::time::sleep(drain).await;
    server.stop(true).await;
}

/// On SIGHUP: reloads the policy files (as `POST /v1/policies/reload`).
async fn reload_on_hangup(
    state: web::Data<AppState>,
    mut hup: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return,
        }
        match crate::service::reload::reload(&state).await {
            Ok(report) => {
                tracing::info!(generation = report.generation, "SIGHUP: policies reloaded")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; nothing changed"),
        }
    }
}

/// Folds learned rewards into every local model every `sync_ms`, and saves
/// snapshots every `snapshot_ms`.
async fn learner(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.settings.sync_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = Duration::from_millis(state.settings.snapshot_ms);
    let mut last_save = std::time::Instant::now();
    // Reloads are rare: the published set is read at most this often, not
    // every sync tick.
    const POLICY_POLL: Duration = Duration::from_millis(250);
    let mut last_poll: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if last_poll.is_some_and(|t| t.elapsed() < POLICY_POLL) {
            // Not yet.
        } else if state.policies.load().generation == 0 {
            last_poll = Some(std::time::Instant::now());
            // The start could not reach the store: adopt now.
            let adopted = crate::service::reload::adopt(&state).await;
            state.store_result("policy_set", &adopted);
        } else {
            last_poll = Some(std::time::Instant::now());
            let followed = crate::service::reload::follow(&state).await;
            if followed.is_err() {
                state.store_result("policy_set", &followed);
            }
            crate::service::promote::auto(&state).await;
        }
        for rt in state.policies.load_full().live.values() {
            let synced = rt.sync(&state.store, &state.metrics).await;
            if synced.is_err() {
                state.store_result("sync", &synced);
                continue;
            }
            let saved = rt.snapshot(&state.store, every, false).await;
            if saved.is_err() {
                state.store_result("snapshot", &saved);
            }
        }
        if last_save.elapsed() >= every {
            last_save = std::time::Instant::now();
            save_state(&state).await;
        }
    }
}

/// Embedded mode with a state path: saves the in-process store.
async fn save_state(state: &AppState) {
    if let (Some(store), Some(path)) = (&state.embedded, &state.settings.state_path) {
        let saved = store.save(path).await;
        if saved.is_err() {
            state.store_result("save_state", &saved);
        }
    }
}

/// While the outbox holds operations: fsyncs it, and once the store answers
/// a ping, replays it (see [`crate::recovery`]). On stop, a last fsync; what
/// is still queued is replayed by the next start.
async fn replayer(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    const PARKED_RETRY: Duration = Duration::from_millis(500);
    let mut tick = tokio::time::interval(FSYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_parked_retry = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if !state.outbox.active() {
            // Parked operations wait for other replicas' replays: retry
            // them at a slower pace than the queue.
            if state.outbox.parked_len() > 0 && last_parked_retry.elapsed() >= PARKED_RETRY {
                last_parked_retry = std::time::Instant::now();
                recovery::retry_parked(&state).await;
            }
            continue;
        }
        if let Err(e) = state.outbox.sync() {
            tracing::error!(error = %e, "outbox: fsync failed");
        }
        let ping = state.store.ping().await;
        state.store_result("ping", &ping);
        if ping.is_ok() {
            let n = recovery::drain(&state).await;
            if n > 0 {
                tracing::info!(ops = n, left = state.outbox.len(), "outbox replayed");
            }
        }
    }
    if let Err(e) = state.outbox.sync() {
        tracing::error!(error = %e, "outbox: fsync failed");
    }
}

/// Closes due reward windows every `sweep_ms`.
async fn sweeper(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.settings.sweep_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if state.outbox.active() {
            // Queued rewards must reach the store before a window they
            // arrived in is closed with the default.
            continue;
        }
        // Other replicas may hold queued rewards too: after an outage this
        // replica saw, wait until each of them had time to announce its
        // replay, and while one replays (see `recovery`).
        let failed_at = state.store_failed_at_ms.load(Ordering::Relaxed);
        if crate::service::unix_ms() - failed_at < recovery::SWEEP_HOLD_MS {
            continue;
        }
        match state.store.replaying().await {
            Ok(false) => {}
            Ok(true) => continue,
            Err(e) => {
                state.store_result("sweep", &Err::<(), _>(e));
                continue;
            }
        }
        for rt in state.policies.load_full().live.values() {
            let swept = rt.sweep(&state.store, &state.log, &state.metrics).await;
            if swept.is_err() {
                state.store_result("sweep", &swept);
            }
        }
    }
}

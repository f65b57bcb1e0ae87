//! Settings: built-in defaults, then an optional TOML file (`NUDGE_CONFIG`,
//! default `nudge.toml` if present), then `NUDGE_*` environment variables
//! (`NUDGE_REDIS_URL` sets `redis_url`, and so on). With nothing set, the
//! service runs on the embedded defaults: in-process store, SQLite log.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Every setting of the service. Field docs name the environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `NUDGE_BIND`: address and port to listen on.
    pub bind: String,
    /// `NUDGE_POLICIES`: directory (or file) of policy TOML files.
    pub policies: PathBuf,
    /// `NUDGE_DATA_DIR`: spool and other local files.
    pub data_dir: PathBuf,
    /// `NUDGE_REDIS_URL`: the Redis model store; unset = in-process store.
    pub redis_url: Option<String>,
    /// `NUDGE_STATE_PATH`: embedded mode only (no Redis): the file the
    /// in-process store is saved to every `snapshot_ms` and at a graceful
    /// stop, and loaded from at start; unset = the state lives in memory
    /// only.
    pub state_path: Option<PathBuf>,
    /// `NUDGE_REDIS_PREFIX`: prefix of every Redis key.
    pub redis_prefix: String,
    /// `NUDGE_REDIS_CLUSTER`: `NUDGE_REDIS_URL` names a Redis Cluster's seed
    /// nodes, separated by commas.
    pub redis_cluster: bool,
    /// `NUDGE_REDIS_SHARDS`: shards per policy (1..=1024; default 1 on one
    /// node, 16 on a cluster). A policy's events, rewards and learned
    /// entries spread over this many hash slots, so keep it at least the
    /// number of masters. Fixed for a deployment's life: it decides which
    /// key holds an event.
    pub redis_shards: Option<u16>,
    /// `NUDGE_REDIS_WAIT_REPLICAS`: replicas that must acknowledge every
    /// write (Redis `WAIT`) before it counts as done; 0 = none. With 1 or
    /// more, an acknowledged decision or reward survives a master failover.
    pub redis_wait_replicas: u32,
    /// `NUDGE_REDIS_WAIT_MS`: how long a write waits for those replicas.
    pub redis_wait_ms: u64,
    /// `NUDGE_STORE_TIMEOUT_MS`: bound on every store call.
    pub store_timeout_ms: u64,
    /// `NUDGE_DATABASE_URL`: decision log, `postgres://…` or `sqlite://…`.
    pub database_url: String,
    /// `NUDGE_MIGRATE`: apply migrations at start.
    pub migrate: bool,
    /// `NUDGE_ADMIN_TOKEN`: an admin key. Alone (without `api_keys`), it
    /// guards only the admin routes (reset), as it always has; unset with no
    /// other key = every route is open (embedded use). See [`crate::http::auth`].
    pub admin_token: Option<String>,
    /// `NUDGE_API_KEYS`: API keys, `name:role[@rate[/burst]]:secret`,
    /// comma-separated (roles: `decide`, `read`, `admin`). Any key makes
    /// every route but `/healthz` and `/readyz` need one.
    pub api_keys: Option<String>,
    /// `NUDGE_API_KEYS_FILE`: a TOML file of `[[keys]]` (`name`, `role`,
    /// `secret`, optional `rate`, `burst`), added to `api_keys`.
    pub api_keys_file: Option<PathBuf>,
    /// `NUDGE_RATE_LIMIT`: requests per second allowed to each key without
    /// its own rate, and to all keyless requests together; unset = no limit.
    pub rate_limit: Option<f64>,
    /// `NUDGE_RATE_BURST`: requests allowed at once above the rate (default:
    /// the rate rounded up).
    pub rate_burst: Option<u32>,
    /// `NUDGE_LOG_BATCH_SIZE`: most log rows per database write.
    pub log_batch_size: usize,
    /// `NUDGE_LOG_FLUSH_MS`: flush the log at least this often.
    pub log_flush_ms: u64,
    /// `NUDGE_LOG_QUEUE`: log queue capacity (overflow goes to the spool).
    pub log_queue: usize,
    /// `NUDGE_SYNC_MS`: how often each replica folds learned rewards into
    /// its model (the bound on model staleness).
    pub sync_ms: u64,
    /// `NUDGE_SWEEP_MS`: how often closed reward windows get their default.
    pub sweep_ms: u64,
    /// `NUDGE_SNAPSHOT_MS`: how often a replica saves a model snapshot.
    pub snapshot_ms: u64,
    /// `NUDGE_RETENTION_SECS`: how long a closed event is remembered, to
    /// answer a late reward with 404/409 precisely and retried decides with
    /// the same decision.
    pub retention_secs: u64,
    /// `NUDGE_OUTBOX_MAX_OPS`: most store operations kept while the store
    /// is unavailable (about 1 KB each, on disk and in memory); beyond,
    /// decisions are still answered but not learned from, and rewards get
    /// 503.
    pub outbox_max_ops: usize,
    /// `NUDGE_OUTBOX_PARK_MS`: how long a replayed reward or activation
    /// whose event the store does not know yet is kept and retried (its
    /// decision may be in another replica's outbox, replayed later) before
    /// it is rejected as `unknown_event`.
    pub outbox_park_ms: u64,
    /// `NUDGE_MAX_BODY_BYTES`: largest request body.
    pub max_body_bytes: usize,
    /// `NUDGE_MAX_CANDIDATES`: most candidate actions per request.
    pub max_candidates: usize,
    /// `NUDGE_MAX_K`: largest slate.
    pub max_k: usize,
    /// `NUDGE_DRAIN_MS`: after SIGTERM, how long the service keeps
    /// answering (readiness 503, `Connection: close` on every response)
    /// before it closes the listener and finishes what is in flight.
    pub drain_ms: u64,
    /// `NUDGE_WORKERS`: HTTP worker threads (0 = one per core).
    pub workers: usize,
    /// `NUDGE_REPLICA`: this replica's name on the live page and its JSON
    /// routes (default: `hostname/pid`).
    pub replica: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".into(),
            policies: "policies".into(),
            data_dir: "data".into(),
            redis_url: None,
            state_path: None,
            redis_prefix: "nudge".into(),
            redis_cluster: false,
            redis_shards: None,
            redis_wait_replicas: 0,
            redis_wait_ms: 100,
            store_timeout_ms: 500,
            database_url: "sqlite://nudge.db".into(),
            migrate: true,
            admin_token: None,
            api_keys: None,
            api_keys_file: None,
            rate_limit: None,
            rate_burst: None,
            log_batch_size: 5000,
            log_flush_ms: 100,
            log_queue: 100_000,
            sync_ms: 20,
            sweep_ms: 500,
            snapshot_ms: 5_000,
            retention_secs: 3_600,
            outbox_max_ops: 1_000_000,
            outbox_park_ms: 60_000,
            max_body_bytes: 1 << 20,
            max_candidates: 1_000,
            max_k: 100,
            drain_ms: 1_000,
            workers: 0,
            replica: None,
        }
    }
}

impl Settings {
    /// Defaults, then the config file, then the environment.
    pub fn load() -> Result<Settings, Box<figment::Error>> {
        let file = std::env::var("NUDGE_CONFIG").unwrap_or_else(|_| "nudge.toml".into());
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("NUDGE_").ignore(&["CONFIG"]))
            .extract()
            .map_err(Box::new)
    }

    /// The Redis store's configuration for `urls` (`NUDGE_REDIS_URL`).
    pub fn redis_config(&self, urls: &str) -> crate::store::RedisConfig {
        crate::store::RedisConfig {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
            cluster: self.redis_cluster,
            prefix: self.redis_prefix.clone(),
            timeout: self.store_timeout(),
            shards: self
                .redis_shards
                .unwrap_or(if self.redis_cluster { 16 } else { 1 }),
            wait_replicas: self.redis_wait_replicas,
            wait_timeout: Duration::from_millis(self.redis_wait_ms),
        }
    }

    /// `store_timeout_ms` as a duration.
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }
}

//! Connections to one Redis node or a Redis Cluster, and the replication
//! acknowledgement (`WAIT`) that makes a write survive a failover.

use super::super::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// Where the store connects.
#[derive(Clone)]
pub(super) enum Client {
    /// One Redis node (a multiplexed connection per thread).
    Single(redis::Client, ConnectionManagerConfig),
    /// A Redis Cluster (a cluster connection per thread: it follows
    /// `MOVED`/`ASK` and refreshes the slot map after a failover).
    Cluster(ClusterClient),
}

/// One thread's connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Client {
    /// A client for `urls` (one node, or a cluster's seed nodes).
    pub(super) fn new(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        if cluster {
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // A failover takes seconds; the store's own timeout bounds
                // each call, and the outbox covers what fails.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(unavailable)?;
            return Ok(Client::Cluster(client));
        }
        let [url] = urls else {
            return Err(StoreError::Unavailable(format!(
                "one Redis URL expected without NUDGE_REDIS_CLUSTER, got {}",
                urls.len()
            )));
        };
        let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        // Validate the configuration once, up front.
        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(unavailable)?;
        Ok(Client::Single(client, config))
    }

    /// A new connection (lazy for one node; a cluster connection reads the
    /// slot map first).
    pub(super) async fn connect(&self) -> Result<Conn, StoreError> {
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        match self {
            Client::Single(client, config) => Ok(Conn::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(unavailable)?,
            )),
            Client::Cluster(client) => Ok(Conn::Cluster(
                client.get_async_connection().await.map_err(unavailable)?,
            )),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Client::Cluster(_))
    }
}

impl Conn {
    /// Waits until `replicas` replicas of the node holding `key` have every
    /// write this connection sent it so far; fewer in `timeout` is an
    /// error (the write may be lost in a failover: the caller must treat
    /// it as not acknowledged, and a replay is idempotent).
    pub(super) async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let acked: i64 = match self {
            Conn::Single(c) => cmd.query_async(c).await?,
            Conn::Cluster(c) => {
                // WAIT names no key: route it to the node that took the
                // write (by default it would go to every master).
                let route = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(v)?
            }
        };
        if acked < i64::from(replicas) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "write not acknowledged by enough replicas",
                format!("{acked} of {replicas} within {timeout:?}"),
            )));
        }
        Ok(())
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

//! Connecting to Redis: one server through a `ConnectionManager` (multiplexed, reconnects
//! by itself) or a cluster through the redis crate's async cluster connection, and the
//! one retry a command gets when its connection turned out to be dead.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Value};
use tokio::sync::OnceCell;

use crate::store::{StoreError, StoreLocation};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the store is connected to.
pub(super) enum Connection {
    Single(ConnectionManager),
    /// Connected on first use, so that the service starts (and reports not ready) while
    /// the cluster is down.
    Cluster {
        client: Box<ClusterClient>,
        connection: OnceCell<ClusterConnection>,
    },
}

impl Connection {
    /// Prepares the connection; nothing is sent until the first command.
    pub(super) fn open(location: &StoreLocation) -> Result<Connection, StoreError> {
        match location {
            StoreLocation::Memory => Err(StoreError::permanent("`memory` is not a Redis location")),
            StoreLocation::Redis(url) => {
                let client = redis::Client::open(url.as_str()).map_err(invalid_location)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(Connection::Single(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(invalid_location)?,
                ))
            }
            StoreLocation::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()
                    .map_err(invalid_location)?;
                Ok(Connection::Cluster { client: Box::new(client), connection: OnceCell::new() })
            }
        }
    }

    /// The one server's connection manager; `None` for a cluster.
    pub(super) fn single(&self) -> Option<&ConnectionManager> {
        match self {
            Connection::Single(manager) => Some(manager),
            Connection::Cluster { .. } => None,
        }
    }

    async fn handle(&self) -> Result<Conn, StoreError> {
        match self {
            Connection::Single(manager) => Ok(Conn::Single(manager.clone())),
            Connection::Cluster { client, connection } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .map(|c| Conn::Cluster(c.clone()))
                .map_err(store_error),
        }
    }

    /// Runs `op`, once more if the connection turned out to be dead (the connection
    /// manager reconnects meanwhile). The only way a retried check counts twice is a Redis
    /// that ran the script and died before answering: the caller then pays one extra unit.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match op(self.handle().await?).await {
            Err(e) if is_dead_connection(&e) => op(self.handle().await?).await.map_err(store_error),
            result => result.map_err(store_error),
        }
    }

    /// One command, through [`Connection::run`].
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await }).await
    }
}

/// The connection was lost or refused: the same command on a new one may succeed.
pub(super) fn is_dead_connection(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_connection_refusal()
}

/// A failed command as a store error, transient when the redis crate would retry it.
pub(super) fn store_error(e: RedisError) -> StoreError {
    let transient = !matches!(e.retry_method(), RetryMethod::NoRetry);
    StoreError { transient, message: format!("redis: {e}") }
}

fn invalid_location(e: RedisError) -> StoreError {
    StoreError::permanent(format!("invalid Redis location: {e}"))
}

/// One connection handle, standalone or cluster (both multiplexed and cheap to clone).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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

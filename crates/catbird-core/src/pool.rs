//! Building a connection pool from a connection string.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::error::Error;

/// The default number of connections of a pool built by [`pool_from_url`].
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Builds a pool of at most `max_size` connections from a connection string
/// (`postgres://user@host:port/db` or `host=... user=...`). Connections are
/// opened lazily, so an unreachable server shows up at the first call, not
/// here.
///
/// Connections are made without TLS. To use TLS, build a
/// `deadpool_postgres::Pool` with your TLS connector and pass it to
/// [`crate::Client::new`].
///
/// # Errors
///
/// [`Error::InvalidArgument`] when the connection string does not parse.
pub fn pool_from_url(url: &str, max_size: usize) -> Result<Pool, Error> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| Error::InvalidArgument(format!("invalid connection string: {error}")))?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|error| {
            Error::InvalidArgument(format!("could not build the connection pool: {error}"))
        })
}

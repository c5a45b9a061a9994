//! [`Executor`]: anything catbird can run its SQL on.

use std::future::Future;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::Error;

/// A parameter list for one statement.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Anything catbird can run SQL on: a connection pool, a pooled or plain
/// client, or an open transaction.
///
/// Every catbird operation takes an `&impl Executor`, so an operation run on
/// the caller's transaction commits or rolls back with the caller's own
/// writes. Pooled clients and pooled transactions use deadpool's statement
/// cache, so repeated calls skip the prepare round trip; a plain
/// `tokio_postgres` client prepares each statement anew.
pub trait Executor: Send + Sync {
    /// Runs a statement and returns its rows.
    fn query_rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;

    /// Runs a statement and returns its only row, or `None` when it returns
    /// none.
    fn query_opt_row(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
        async move { Ok(self.query_rows(sql, params).await?.into_iter().next()) }
    }
}

impl Executor for deadpool_postgres::Pool {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let client = self.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }
}

impl Executor for deadpool_postgres::Client {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let statement = self.prepare_cached(sql).await?;
        Ok(self.query(&statement, params).await?)
    }
}

impl Executor for deadpool_postgres::Transaction<'_> {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let statement = self.prepare_cached(sql).await?;
        Ok(self.query(&statement, params).await?)
    }
}

impl Executor for tokio_postgres::Client {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        Ok(self.query(sql, params).await?)
    }
}

impl Executor for tokio_postgres::Transaction<'_> {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        Ok(self.query(sql, params).await?)
    }
}

impl<E: Executor + ?Sized> Executor for &E {
    fn query_rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
        (**self).query_rows(sql, params)
    }
}

impl<E: Executor + ?Sized> Executor for std::sync::Arc<E> {
    fn query_rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
        (**self).query_rows(sql, params)
    }
}

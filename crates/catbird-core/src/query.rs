//! [`Query`]: a catbird statement with its parameters, built but not run.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::Error;
use crate::executor::Executor;

/// SQL text and owned parameters for one catbird call.
///
/// Builders such as [`crate::queue::send_query`] return a `Query` instead of
/// running it, so a caller can run it on its own transaction, pipeline several
/// of them, or hand the text and parameters to another driver. Parameters the
/// caller left unset are SQL `NULL`, so the SQL function applies its own
/// defaults.
pub struct Query {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("params", &self.params)
            .finish()
    }
}

impl Query {
    pub(crate) fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Self {
        Query { sql, params }
    }

    /// The SQL text, with parameters `$1`, `$2`, ...
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// The parameters, in order, ready for `tokio_postgres` calls.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|param| &**param as &(dyn ToSql + Sync))
            .collect()
    }

    /// Runs the statement on `executor` and returns its rows.
    pub async fn fetch_all(&self, executor: &impl Executor) -> Result<Vec<Row>, Error> {
        executor.query_rows(self.sql, &self.params()).await
    }
}

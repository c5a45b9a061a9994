//! [`Client`]: the catbird operations bound to a connection pool.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::executor::{Executor, Params};
use crate::flow::{self, FlowDef, FlowHandle, FlowInfo, FlowRunInfo, RunFlowOpts, StepRunInfo};
use crate::poll::PollOpts;
use crate::queue::{self, CreateQueueOpts, Message, QueueInfo, SendManyOpts, SendOpts};
use crate::task::{self, RunTaskOpts, RunTasksOpts, Task, TaskHandle, TaskInfo, TaskRunInfo};
use crate::wait::RunListener;
use crate::workers::{self, WorkerInfo};

/// The catbird operations on a connection pool.
///
/// Each method takes a pooled connection for one call. To run an operation
/// inside your own transaction, call the free function of the same name in
/// [`crate::queue`] with the transaction as executor. A `Client` is cheap to
/// clone and is itself an [`Executor`].
#[derive(Clone, Debug)]
pub struct Client {
    pool: deadpool_postgres::Pool,
    listener: Option<Arc<RunListener>>,
}

impl Client {
    /// A client over `pool`.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Client {
            pool,
            listener: None,
        }
    }

    /// Sets the connection on which the client listens for finished runs.
    ///
    /// With it, [`TaskHandle::wait_for_output`] returns as soon as the run's
    /// result commits instead of at its next check: the client opens one
    /// `LISTEN` connection at the first wait and shares it among all waits
    /// of this client and its clones. Without it, waits re-read the run
    /// every poll interval.
    pub fn listen_config(mut self, config: tokio_postgres::Config) -> Self {
        self.listener = Some(Arc::new(RunListener::new(config)));
        self
    }

    /// Sets the connection string of [`Client::listen_config`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the connection string does not parse.
    pub fn listen_url(self, url: &str) -> Result<Self, Error> {
        let config: tokio_postgres::Config = url.parse().map_err(|error| {
            Error::InvalidArgument(format!("invalid listen connection string: {error}"))
        })?;
        Ok(self.listen_config(config))
    }

    /// The client's shared listen connection, when it has one.
    pub(crate) fn listener(&self) -> Option<&Arc<RunListener>> {
        self.listener.as_ref()
    }

    /// The pool this client uses.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// See [`queue::create_queue`].
    pub async fn create_queue(&self, name: &str, opts: CreateQueueOpts) -> Result<(), Error> {
        queue::create_queue(&self.pool, name, opts).await
    }

    /// See [`queue::delete_queue`].
    pub async fn delete_queue(&self, name: &str) -> Result<bool, Error> {
        queue::delete_queue(&self.pool, name).await
    }

    /// See [`queue::get_queue`].
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        queue::get_queue(&self.pool, name).await
    }

    /// See [`queue::list_queues`].
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        queue::list_queues(&self.pool).await
    }

    /// See [`queue::send`].
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        body: &T,
        opts: SendOpts,
    ) -> Result<i64, Error> {
        queue::send(&self.pool, queue, body, opts).await
    }

    /// See [`queue::send_many`].
    pub async fn send_many<T: Serialize>(
        &self,
        queue: &str,
        bodies: &[T],
        opts: SendManyOpts,
    ) -> Result<Vec<i64>, Error> {
        queue::send_many(&self.pool, queue, bodies, opts).await
    }

    /// See [`queue::read`].
    pub async fn read(
        &self,
        queue: &str,
        quantity: usize,
        hide_for: Duration,
    ) -> Result<Vec<Message>, Error> {
        queue::read(&self.pool, queue, quantity, hide_for).await
    }

    /// See [`queue::read_poll`].
    pub async fn read_poll(
        &self,
        queue: &str,
        quantity: usize,
        hide_for: Duration,
        poll: PollOpts,
    ) -> Result<Vec<Message>, Error> {
        queue::read_poll(&self.pool, queue, quantity, hide_for, poll).await
    }

    /// See [`queue::hide`].
    pub async fn hide(&self, queue: &str, id: i64, hide_for: Duration) -> Result<bool, Error> {
        queue::hide(&self.pool, queue, id, hide_for).await
    }

    /// See [`queue::hide_many`].
    pub async fn hide_many(
        &self,
        queue: &str,
        ids: &[i64],
        hide_for: Duration,
    ) -> Result<Vec<i64>, Error> {
        queue::hide_many(&self.pool, queue, ids, hide_for).await
    }

    /// See [`queue::delete`].
    pub async fn delete(&self, queue: &str, id: i64) -> Result<bool, Error> {
        queue::delete(&self.pool, queue, id).await
    }

    /// See [`queue::delete_many`].
    pub async fn delete_many(&self, queue: &str, ids: &[i64]) -> Result<Vec<i64>, Error> {
        queue::delete_many(&self.pool, queue, ids).await
    }
}

impl Client {
    /// See [`task::create_task`].
    pub async fn create_task(&self, task: &Task) -> Result<(), Error> {
        task::create_task(&self.pool, task).await
    }

    /// See [`task::delete_task`].
    pub async fn delete_task(&self, name: &str) -> Result<bool, Error> {
        task::delete_task(&self.pool, name).await
    }

    /// See [`task::get_task`].
    pub async fn get_task(&self, name: &str) -> Result<TaskInfo, Error> {
        task::get_task(&self.pool, name).await
    }

    /// See [`task::list_tasks`].
    pub async fn list_tasks(&self) -> Result<Vec<TaskInfo>, Error> {
        task::list_tasks(&self.pool).await
    }

    /// See [`task::run_task`]. The handle carries this client, so
    /// `wait_for_output()` needs no argument.
    pub async fn run_task<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
        opts: RunTaskOpts,
    ) -> Result<TaskHandle, Error> {
        Ok(task::run_task(&self.pool, name, input, opts)
            .await?
            .with_client(self.clone()))
    }

    /// See [`task::run_tasks`].
    pub async fn run_tasks<I: Serialize>(
        &self,
        name: &str,
        inputs: &[I],
        opts: RunTasksOpts,
    ) -> Result<Vec<TaskHandle>, Error> {
        let handles = task::run_tasks(&self.pool, name, inputs, opts).await?;
        Ok(handles
            .into_iter()
            .map(|handle| handle.with_client(self.clone()))
            .collect())
    }

    /// A handle to an existing run, for waiting on it.
    pub fn task_handle(&self, name: &str, id: i64) -> TaskHandle {
        TaskHandle::new(name, id).with_client(self.clone())
    }

    /// See [`task::get_task_run`].
    pub async fn get_task_run(&self, name: &str, id: i64) -> Result<TaskRunInfo, Error> {
        task::get_task_run(&self.pool, name, id).await
    }

    /// See [`task::list_task_runs`].
    pub async fn list_task_runs(&self, name: &str) -> Result<Vec<TaskRunInfo>, Error> {
        task::list_task_runs(&self.pool, name).await
    }

    /// See [`task::cancel_task_run`].
    pub async fn cancel_task_run(
        &self,
        name: &str,
        id: i64,
        reason: Option<&str>,
    ) -> Result<bool, Error> {
        task::cancel_task_run(&self.pool, name, id, reason).await
    }

    /// See [`flow::create_flow`].
    pub async fn create_flow(&self, flow: &FlowDef) -> Result<(), Error> {
        flow::create_flow(&self.pool, flow).await
    }

    /// See [`flow::delete_flow`].
    pub async fn delete_flow(&self, name: &str) -> Result<bool, Error> {
        flow::delete_flow(&self.pool, name).await
    }

    /// See [`flow::get_flow`].
    pub async fn get_flow(&self, name: &str) -> Result<FlowInfo, Error> {
        flow::get_flow(&self.pool, name).await
    }

    /// See [`flow::list_flows`].
    pub async fn list_flows(&self) -> Result<Vec<FlowInfo>, Error> {
        flow::list_flows(&self.pool).await
    }

    /// See [`flow::run_flow`]. The handle carries this client.
    pub async fn run_flow<I: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &I,
        opts: RunFlowOpts,
    ) -> Result<FlowHandle, Error> {
        Ok(flow::run_flow(&self.pool, name, input, opts)
            .await?
            .with_client(self.clone()))
    }

    /// A handle to an existing flow run.
    pub fn flow_handle(&self, name: &str, id: i64) -> FlowHandle {
        FlowHandle::new(name, id).with_client(self.clone())
    }

    /// See [`flow::signal_flow`].
    pub async fn signal_flow<S: Serialize + ?Sized>(
        &self,
        flow: &str,
        run_id: i64,
        step: &str,
        input: &S,
    ) -> Result<(), Error> {
        flow::signal_flow(&self.pool, flow, run_id, step, input).await
    }

    /// See [`flow::cancel_flow_run`].
    pub async fn cancel_flow_run(
        &self,
        flow: &str,
        id: i64,
        reason: Option<&str>,
    ) -> Result<bool, Error> {
        flow::cancel_flow_run(&self.pool, flow, id, reason).await
    }

    /// See [`flow::get_flow_run`].
    pub async fn get_flow_run(&self, flow: &str, id: i64) -> Result<FlowRunInfo, Error> {
        flow::get_flow_run(&self.pool, flow, id).await
    }

    /// See [`flow::list_flow_runs`].
    pub async fn list_flow_runs(&self, flow: &str) -> Result<Vec<FlowRunInfo>, Error> {
        flow::list_flow_runs(&self.pool, flow).await
    }

    /// See [`flow::get_flow_run_steps`].
    pub async fn get_flow_run_steps(&self, flow: &str, id: i64) -> Result<Vec<StepRunInfo>, Error> {
        flow::get_flow_run_steps(&self.pool, flow, id).await
    }

    /// See [`crate::gc::gc`].
    pub async fn gc(&self) -> Result<crate::gc::GcReport, Error> {
        crate::gc::gc(&self.pool).await
    }

    /// See [`crate::gc::purge_task_runs`].
    pub async fn purge_task_runs(
        &self,
        task: &str,
        older_than: std::time::Duration,
    ) -> Result<i32, Error> {
        crate::gc::purge_task_runs(&self.pool, task, older_than).await
    }

    /// See [`crate::gc::purge_flow_runs`].
    pub async fn purge_flow_runs(
        &self,
        flow: &str,
        older_than: std::time::Duration,
    ) -> Result<i32, Error> {
        crate::gc::purge_flow_runs(&self.pool, flow, older_than).await
    }

    /// See [`crate::gc::clear_task_runs`].
    pub async fn clear_task_runs(&self, task: &str) -> Result<i32, Error> {
        crate::gc::clear_task_runs(&self.pool, task).await
    }

    /// See [`crate::gc::clear_flow_runs`].
    pub async fn clear_flow_runs(&self, flow: &str) -> Result<i32, Error> {
        crate::gc::clear_flow_runs(&self.pool, flow).await
    }

    /// See [`workers::list_workers`].
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, Error> {
        workers::list_workers(&self.pool).await
    }
}

impl Executor for Client {
    async fn query_rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        self.pool.query_rows(sql, params).await
    }
}

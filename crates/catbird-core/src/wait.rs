//! Completion wake-ups for callers waiting on task runs.
//!
//! A [`crate::Client`] given a listen connection holds one `LISTEN`
//! connection, opened at the first wait, and wakes every local waiter whose
//! run the database reports finished: `cb_complete_tasks` and
//! `cb_fail_tasks` notify `td|<task>|<id>,...` for runs registered in
//! `cb_task_waiters`, and a cancellation notifies `tx|<task>|<id>`.
//! Notifications are hints: a waiter also re-reads its run on a timer, so a
//! lost notification only delays it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use crate::sql;

/// How long the listener waits before it connects again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How often a listener without waiters checks whether its client is gone.
const OWNER_CHECK: Duration = Duration::from_secs(30);

type Waiters = HashMap<(String, i64), Vec<Arc<Notify>>>;

/// The shared `LISTEN` connection of one client and the waiters it wakes.
#[derive(Debug)]
pub(crate) struct RunListener {
    config: tokio_postgres::Config,
    waiters: Mutex<Waiters>,
    /// Whether the listener task runs.
    started: Mutex<bool>,
    /// Whether the connection is up and listening.
    connected: std::sync::atomic::AtomicBool,
}

/// One waiter's registration; dropping it removes the waiter.
pub(crate) struct Registration {
    listener: Arc<RunListener>,
    key: (String, i64),
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiters = self.listener.lock_waiters();
        if let Some(list) = waiters.get_mut(&self.key) {
            list.retain(|notify| !Arc::ptr_eq(notify, &self.notify));
            if list.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

impl RunListener {
    pub(crate) fn new(config: tokio_postgres::Config) -> Self {
        RunListener {
            config,
            waiters: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
            connected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the connection is up, so that finished runs wake waiters.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Registers a waiter for run `id` of `task` and starts the listener if
    /// it is not running.
    pub(crate) fn register(self: &Arc<Self>, task: &str, id: i64) -> Registration {
        let notify = Arc::new(Notify::new());
        let key = (task.to_owned(), id);
        self.lock_waiters()
            .entry(key.clone())
            .or_default()
            .push(notify.clone());
        {
            let mut started = self
                .started
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !*started {
                *started = true;
                tokio::spawn(listen(Arc::downgrade(self), self.config.clone()));
            }
        }
        Registration {
            listener: self.clone(),
            key,
            notify,
        }
    }

    fn wake_all(&self) {
        for list in self.lock_waiters().values() {
            for notify in list {
                notify.notify_one();
            }
        }
    }

    /// Wakes the waiters a notification payload names.
    fn dispatch(&self, payload: &str) {
        let mut parts = payload.splitn(3, '|');
        let (Some(kind), Some(task), Some(ids)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if kind != "td" && kind != "tx" {
            return;
        }
        let waiters = self.lock_waiters();
        if ids.is_empty() {
            // The id list did not fit the payload: wake every waiter of the task.
            for ((waited_task, _), list) in waiters.iter() {
                if waited_task == task {
                    list.iter().for_each(|notify| notify.notify_one());
                }
            }
            return;
        }
        for id in ids.split(',').filter_map(|id| id.parse::<i64>().ok()) {
            if let Some(list) = waiters.get(&(task.to_owned(), id)) {
                list.iter().for_each(|notify| notify.notify_one());
            }
        }
    }
}

/// Holds the listen connection while the client exists, reconnecting after
/// a failure. Every (re)connection wakes all waiters, because notifications
/// may have been missed.
async fn listen(owner: Weak<RunListener>, config: tokio_postgres::Config) {
    loop {
        let result = listen_once(&owner, &config).await;
        let Some(listener) = owner.upgrade() else {
            return;
        };
        listener
            .connected
            .store(false, std::sync::atomic::Ordering::Release);
        listener.wake_all();
        drop(listener);
        if let Err(error) = result {
            tracing::warn!(%error, "lost the connection that listens for finished runs; reconnecting in 1 s");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once(
    owner: &Weak<RunListener>,
    config: &tokio_postgres::Config,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    });
    let result = async {
        let channel: String = client.query_one(sql::WAKE_CHANNEL, &[]).await?.get(0);
        let quoted = channel.replace('"', "\"\"");
        client
            .batch_execute(&format!("LISTEN \"{quoted}\""))
            .await?;
        match owner.upgrade() {
            Some(listener) => {
                listener
                    .connected
                    .store(true, std::sync::atomic::Ordering::Release);
                // A run may have finished while the connection was down.
                listener.wake_all();
            }
            None => return Ok(()),
        }
        loop {
            let payload = tokio::time::timeout(OWNER_CHECK, notifications.recv()).await;
            let Some(listener) = owner.upgrade() else {
                return Ok(());
            };
            match payload {
                Ok(Some(payload)) => listener.dispatch(&payload),
                // The connection ended: the driver holds the error.
                Ok(None) => return Ok(()),
                Err(_) => {}
            }
        }
    }
    .await;
    drop(client);
    match result {
        Err(error) => {
            driver.abort();
            Err(error)
        }
        Ok(()) => match driver.await {
            Ok(Err(error)) => Err(error),
            _ => Ok(()),
        },
    }
}

//! [`Reader`]: a loop that reads a queue and hands each message to a handler.

use std::fmt::Display;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Message, delete, duration_ms, hide_many, read_poll, renew};
use crate::error::Error;
use crate::executor::Executor;
use crate::names::validate_name;
use crate::poll::PollOpts;

/// How long the reader waits after a failed read before it reads again.
const READ_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// A consumer loop over one queue.
///
/// Each round polls the queue ([`super::read_poll`]) and calls the handler
/// once per message, one message at a time, in the order read. A handler that
/// returns `Ok` acknowledges the message, which is deleted; an `Err` leaves it
/// in place, so it becomes readable again when its lease ends and its
/// delivery count grows on the next read.
///
/// The reader keeps every message it holds inside its lease: while a handler
/// runs it extends the message's lease each time half of `hide_for` has passed
/// since the lease was last set, and before it starts a message that waited in
/// its batch for more than half the lease it extends that lease first. When
/// the extension finds that another reader has read the message since, the
/// message is skipped, so two handlers never run the same message at once
/// while the database is reachable.
///
/// ```no_run
/// # async fn example(pool: deadpool_postgres::Pool) -> Result<(), catbird_core::Error> {
/// use std::time::Duration;
/// use catbird_core::queue::{Message, Reader};
/// use tokio_util::sync::CancellationToken;
///
/// let shutdown = CancellationToken::new();
/// Reader::new(pool, "emails", |message: Message| async move {
///     println!("message {}: {}", message.id, message.body);
///     Ok::<(), anyhow::Error>(())
/// })
/// .quantity(10)
/// .hide_for(Duration::from_secs(30))
/// .run(shutdown)
/// .await
/// # }
/// ```
pub struct Reader<E, H> {
    executor: E,
    queue: String,
    handler: H,
    quantity: usize,
    hide_for: Duration,
    poll: PollOpts,
}

impl<E, H, Fut, HandlerError> Reader<E, H>
where
    E: Executor,
    H: Fn(Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
    HandlerError: Display,
{
    /// A reader of `queue` with 10 messages per read, a 30-second lease and
    /// the default polling (5 s, checking every 200 ms).
    pub fn new(executor: E, queue: impl Into<String>, handler: H) -> Self {
        Reader {
            executor,
            queue: queue.into(),
            handler,
            quantity: 10,
            hide_for: Duration::from_secs(30),
            poll: PollOpts::default(),
        }
    }

    /// Sets the maximum number of messages per read.
    pub fn quantity(mut self, quantity: usize) -> Self {
        self.quantity = quantity;
        self
    }

    /// Sets the lease each read takes on its messages.
    pub fn hide_for(mut self, hide_for: Duration) -> Self {
        self.hide_for = hide_for;
        self
    }

    /// Sets how long each read waits for messages and how often it checks.
    pub fn poll(mut self, poll: PollOpts) -> Self {
        self.poll = poll;
        self
    }

    /// Runs until `shutdown` is cancelled, then returns `Ok(())`.
    ///
    /// A handler that is running when shutdown comes is allowed to finish and
    /// its message is acknowledged as usual; messages of the batch that were
    /// not started yet are made readable again at once. A failed read is
    /// logged and retried after one second; only invalid arguments (a bad
    /// queue name, a zero quantity or lease) end the loop with an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::InvalidArgument`] for arguments that
    /// can never work.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        validate_name("queue", &self.queue)?;
        duration_ms("hide_for", self.hide_for, true)?;
        if self.quantity == 0 {
            return Err(Error::InvalidArgument(
                "quantity must be greater than 0, got 0".to_owned(),
            ));
        }

        tracing::debug!(queue = %self.queue, quantity = self.quantity, "reader started");
        while !shutdown.is_cancelled() {
            let read = tokio::select! {
                result = read_poll(&self.executor, &self.queue, self.quantity, self.hide_for, self.poll) => result,
                () = shutdown.cancelled() => break,
            };
            let read_at = Instant::now();
            match read {
                Ok(messages) => self.handle_batch(messages, read_at, &shutdown).await,
                Err(error) if error.is_invalid_input() => return Err(error),
                Err(error) => {
                    tracing::warn!(queue = %self.queue, %error, "reader could not read; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(READ_ERROR_PAUSE) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::debug!(queue = %self.queue, "reader stopped");
        Ok(())
    }

    async fn handle_batch(
        &self,
        messages: Vec<Message>,
        read_at: Instant,
        shutdown: &CancellationToken,
    ) {
        let renew_every = self.hide_for / 2;
        let mut remaining = messages.into_iter();

        while let Some(message) = remaining.next() {
            if shutdown.is_cancelled() {
                let mut ids = vec![message.id];
                ids.extend(remaining.map(|message| message.id));
                self.release(&ids).await;
                return;
            }

            // The message's lease was set by the read, unless it waited in
            // the batch long enough to need an extension first.
            let mut leased_at = read_at;
            if read_at.elapsed() >= renew_every {
                leased_at = Instant::now();
                if !self.renew_or_skip(&message).await {
                    continue;
                }
            }
            self.handle_one(message, leased_at, renew_every).await;
        }
    }

    /// Extends the lease of a message that waited in the batch. Returns
    /// whether the reader still holds it.
    async fn renew_or_skip(&self, message: &Message) -> bool {
        match renew(&self.executor, &self.queue, message, self.hide_for).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::debug!(queue = %self.queue, message.id = message.id,
                    "message was read again or deleted after its lease ran out; skipping it");
                false
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, message.id = message.id, %error,
                    "could not extend the lease of a waiting message; skipping it");
                false
            }
        }
    }

    /// Runs the handler on `message`, whose current lease was set at
    /// `leased_at`, and extends the lease every `renew_every` from then on.
    async fn handle_one(&self, message: Message, leased_at: Instant, renew_every: Duration) {
        let id = message.id;
        // A panicking handler is a failed handler: the loop goes on.
        let handled =
            std::pin::pin!(AssertUnwindSafe((self.handler)(message.clone())).catch_unwind());
        let mut handled = handled;
        // Extensions are counted from when the lease was set, not from the
        // handler's start: a message that waited almost half the lease would
        // otherwise run without an extension until its lease nearly ran out.
        let mut ticker = tokio::time::interval_at(leased_at + renew_every, renew_every);

        let result = loop {
            tokio::select! {
                result = &mut handled => break result,
                _ = ticker.tick() => {
                    match renew(&self.executor, &self.queue, &message, self.hide_for).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(queue = %self.queue, message.id = id,
                            "message was read again or deleted while its handler ran"),
                        Err(error) => tracing::warn!(queue = %self.queue, message.id = id, %error,
                            "could not extend the lease of a running message"),
                    }
                }
            }
        };

        match result {
            Ok(Ok(())) => {
                if let Err(error) = delete(&self.executor, &self.queue, id).await {
                    tracing::warn!(queue = %self.queue, message.id = id, %error,
                        "could not delete a handled message; it will be read again after its lease");
                }
            }
            Ok(Err(error)) => {
                tracing::info!(queue = %self.queue, message.id = id, %error,
                    "handler failed; the message will be read again after its lease");
            }
            Err(_) => {
                tracing::warn!(queue = %self.queue, message.id = id,
                    "handler panicked; the message will be read again after its lease");
            }
        }
    }

    /// Makes messages the reader will not handle readable again at once.
    async fn release(&self, ids: &[i64]) {
        if let Err(error) = hide_many(&self.executor, &self.queue, ids, Duration::ZERO).await {
            tracing::warn!(queue = %self.queue, count = ids.len(), %error,
                "could not release unstarted messages; they return after their lease");
        }
    }
}

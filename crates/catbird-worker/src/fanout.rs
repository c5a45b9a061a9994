//! Fan-out steps: generators with their yield handle, and reducers with the
//! pager that feeds them item outputs.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use catbird_core::flow::StepKind;
use catbird_core::{Error, Executor, JsonText, sql};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::flow::{StepArgs, StepCallFn, StepContext, StepHandler};
use crate::options::HandlerOpts;
use crate::task::HandlerResult;

/// How many item outputs a reducer reads per statement.
const REDUCE_PAGE: i32 = 500;

pub(crate) type GeneratorFn = Arc<
    dyn Fn(StepArgs, ItemSink, StepContext) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync,
>;

pub(crate) type ReducerFn =
    Arc<dyn Fn(ItemPages, StepContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// The untyped side of a [`Yielder`]: buffers encoded items and writes them
/// as items of the step run, a batch at a time.
#[derive(Clone)]
pub(crate) struct ItemSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    pool: deadpool_postgres::Pool,
    flow: Arc<str>,
    step_run_id: i64,
    attempt: i32,
    batch_size: usize,
    cancel: CancellationToken,
    buffer: tokio::sync::Mutex<Vec<JsonText>>,
    spawned: Mutex<u64>,
}

impl ItemSink {
    pub(crate) fn new(
        pool: deadpool_postgres::Pool,
        flow: Arc<str>,
        step_run_id: i64,
        attempt: i32,
        batch_size: usize,
        cancel: CancellationToken,
    ) -> Self {
        ItemSink {
            inner: Arc::new(SinkInner {
                pool,
                flow,
                step_run_id,
                attempt,
                batch_size: batch_size.max(1),
                cancel,
                buffer: tokio::sync::Mutex::new(Vec::new()),
                spawned: Mutex::new(0),
            }),
        }
    }

    async fn push(&self, item: JsonText) -> Result<(), Error> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::RunCanceled(None));
        }
        let mut buffer = self.inner.buffer.lock().await;
        buffer.push(item);
        if buffer.len() >= self.inner.batch_size {
            self.write(&mut buffer).await?;
        }
        Ok(())
    }

    /// Writes what is buffered; called when the generator returned.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let mut buffer = self.inner.buffer.lock().await;
        if buffer.is_empty() {
            return Ok(());
        }
        self.write(&mut buffer).await
    }

    async fn write(&self, buffer: &mut Vec<JsonText>) -> Result<(), Error> {
        let items: &[JsonText] = buffer;
        let inner = &self.inner;
        let row = inner
            .pool
            .query_opt_row(
                sql::SPAWN_GENERATOR_MAP_TASKS,
                &[&&*inner.flow, &inner.step_run_id, &inner.attempt, &items],
            )
            .await?;
        let first: Option<i32> = row.and_then(|row| row.get(0));
        if first.is_none() {
            inner.cancel.cancel();
            return Err(Error::RunCanceled(Some(
                "the generator's step run stopped; no more items are accepted".to_owned(),
            )));
        }
        let mut spawned = inner
            .spawned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *spawned += buffer.len() as u64;
        drop(spawned);
        buffer.clear();
        Ok(())
    }
}

/// The handle a generator function yields items through.
///
/// Items are buffered and written in batches of the step's batch size, so
/// item handlers start on them while the generator keeps running. `send`
/// fails once the step's attempt has been canceled (its run stopped, or it
/// timed out); the generator should then return.
pub struct Yielder<T> {
    sink: ItemSink,
    _item: PhantomData<fn(T)>,
}

impl<T> Clone for Yielder<T> {
    fn clone(&self) -> Self {
        Yielder {
            sink: self.sink.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Yielder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Yielder")
            .field("flow", &self.sink.inner.flow)
            .field("step_run_id", &self.sink.inner.step_run_id)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> Yielder<T> {
    /// Yields one item. Its index is the number of items yielded before it
    /// in this attempt.
    pub async fn send(&self, item: T) -> Result<(), Error> {
        self.sink
            .push(JsonText::encode("generated item", &item)?)
            .await
    }

    /// Yields every item of `items`, in order.
    pub async fn send_all(&self, items: impl IntoIterator<Item = T>) -> Result<(), Error> {
        for item in items {
            self.send(item).await?;
        }
        Ok(())
    }
}

impl<T> Yielder<T> {
    /// Returns how many items this attempt has written so far. Buffered
    /// items not yet written are not counted.
    pub fn spawned(&self) -> u64 {
        *self
            .sink
            .inner
            .spawned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The completed item outputs of a reducer's source, read a page at a time
/// in item order.
pub(crate) struct ItemPages {
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) flow: Arc<str>,
    pub(crate) flow_run_id: i64,
    pub(crate) source: Arc<str>,
    pub(crate) after: i32,
    pub(crate) done: bool,
}

impl ItemPages {
    /// Reads the next page, or returns `None` after the last item.
    async fn next_page(&mut self) -> Result<Option<Vec<Value>>, Error> {
        if self.done {
            return Ok(None);
        }
        let rows = self
            .pool
            .query_rows(
                sql::READ_MAP_OUTPUTS,
                &[
                    &&*self.flow,
                    &self.flow_run_id,
                    &&*self.source,
                    &self.after,
                    &REDUCE_PAGE,
                ],
            )
            .await?;
        if rows.len() < REDUCE_PAGE as usize {
            self.done = true;
        }
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        self.after = last.get(0);
        Ok(Some(rows.iter().map(|row| row.get(1)).collect()))
    }
}

impl StepHandler {
    /// Creates a generator step. `generator` receives the step's arguments
    /// (flow input, signal, dependency outputs, as for [`StepHandler::new`])
    /// and a [`Yielder`], and yields items. `item_handler` runs once per
    /// item, possibly while the generator still runs. The step completes
    /// when the generator has returned and every item has completed, and its
    /// output is the array of item outputs in yield order.
    ///
    /// The definition becomes a generator step (see [`StepDef::generator`]).
    /// A failed generator attempt is retried from the start: the items of
    /// the failed attempt are discarded, so item handlers may see an item
    /// again.
    ///
    /// [`StepDef::generator`]: catbird_core::flow::StepDef::generator
    pub fn generator<T, O, E1, E2, G, GFut, H, HFut>(
        definition: catbird_core::flow::StepDef,
        generator: G,
        item_handler: H,
    ) -> Self
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E1: Into<anyhow::Error> + Send + 'static,
        E2: Into<anyhow::Error> + Send + 'static,
        G: Fn(StepArgs, Yielder<T>, StepContext) -> GFut + Send + Sync + 'static,
        GFut: Future<Output = Result<(), E1>> + Send + 'static,
        H: Fn(T, StepContext) -> HFut + Send + Sync + 'static,
        HFut: Future<Output = Result<O, E2>> + Send + 'static,
    {
        let mut definition = definition;
        if definition.kind == StepKind::Normal {
            definition.kind = StepKind::Generator;
        }
        let generator = Arc::new(generator);
        let generate: GeneratorFn = Arc::new(move |args, sink, ctx| {
            let generator = generator.clone();
            Box::pin(async move {
                let yielder = Yielder {
                    sink,
                    _item: PhantomData,
                };
                generator(args, yielder, ctx).await.map_err(Into::into)
            })
        });
        let item_handler = Arc::new(item_handler);
        let call: StepCallFn = Arc::new(move |args: StepArgs, ctx: StepContext| {
            let item_handler = item_handler.clone();
            Box::pin(async move {
                let item: T = args.item()?;
                let output = item_handler(item, ctx).await.map_err(Into::into)?;
                Ok(JsonText::encode("item output", &output)?)
            })
        });
        StepHandler {
            definition,
            opts: HandlerOpts::default(),
            call: Some(call),
            generator: Some(generate),
            reducer: None,
        }
    }

    /// Creates a reducer step, which folds the item outputs of its source (a
    /// mapper or generator step, see [`StepDef::reduce`]) in item order,
    /// starting from `A::default()`. The final accumulator is the step's
    /// output. Item outputs are read a page at a time, never all at once. A
    /// failed fold is retried as a whole under this step's options.
    ///
    /// [`StepDef::reduce`]: catbird_core::flow::StepDef::reduce
    pub fn reducer<A, T, E, F, Fut>(definition: catbird_core::flow::StepDef, fold: F) -> Self
    where
        A: Default + Serialize + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
        F: Fn(A, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, E>> + Send + 'static,
    {
        let fold = Arc::new(fold);
        let reduce: ReducerFn = Arc::new(move |mut pages: ItemPages, ctx: StepContext| {
            let fold = fold.clone();
            Box::pin(async move {
                let mut accumulator = A::default();
                while let Some(page) = pages.next_page().await? {
                    for output in page {
                        let item = T::deserialize(&output).map_err(|error| {
                            anyhow::anyhow!(
                                "step \"{}\" could not decode an output of \"{}\": {error}",
                                ctx.step(),
                                pages.source
                            )
                        })?;
                        accumulator = fold(accumulator, item).await.map_err(Into::into)?;
                    }
                    if ctx.is_cancelled() {
                        anyhow::bail!("the reduction was canceled");
                    }
                }
                Ok(JsonText::encode("reducer output", &accumulator)?)
            })
        });
        StepHandler {
            definition,
            opts: HandlerOpts::default(),
            call: None,
            generator: None,
            reducer: Some(reduce),
        }
    }
}

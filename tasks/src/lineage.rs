//! Lineage: how a task's output is made again when the node holding it is lost.
//!
//! Every remote call runs from a [`Lineage`]: its function, its encoded arguments, its options,
//! and for each input ref the input's own lineage plus a weak link to the ref. On a cluster the
//! result's ref keeps that lineage. It keeps task descriptions, not objects: an input that no
//! ref holds any more is freed as before, and made again from its own lineage if it is needed.
//!
//! When fetching an object fails because its copy is gone (the driver's `get` cannot reach the
//! node, or a node cannot pull a task's input), the ref is *rebuilt*: its task runs again.
//! Running a task again first takes each input from its live ref if one is left, or else makes
//! it again from its lineage; when a node reports that an input is lost, that input is rebuilt
//! and the task submitted again. A `put` value has no lineage: losing it is an error naming it.
//! (Ray calls this object reconstruction; like Ray, a task that runs again must be
//! deterministic for the result to be the same.)

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use manta_engine::{ObjectId, TaskSpec};
use manta_scheduler::Client;

use crate::api::TaskOptions;
use crate::error::{Error, Result};
use crate::object_ref::{Resolution, Setter, Shared, UntypedRef};

/// One task as it was submitted: enough to run it again.
pub(crate) struct Lineage {
    function: &'static str,
    args: Bytes,
    inputs: Vec<Input>,
    options: TaskOptions,
}

/// One input of a task: which argument it is, and where to get it again.
struct Input {
    argument: usize,
    /// The input's ref, while any clone of it lives.
    source: Weak<Shared>,
    /// How the input was made (none for a `put` value).
    lineage: Option<Arc<Lineage>>,
}

impl Lineage {
    /// The lineage of a call of `function` whose arguments resolved to `args` and to the refs
    /// `sources` (each with its argument's position).
    pub(crate) fn new(
        function: &'static str,
        args: Bytes,
        sources: &[(usize, UntypedRef)],
        options: &TaskOptions,
    ) -> Arc<Self> {
        let inputs = sources
            .iter()
            .map(|(argument, source)| Input {
                argument: *argument,
                source: source.downgrade(),
                lineage: source.lineage(),
            })
            .collect();
        Arc::new(Self {
            function,
            args,
            inputs,
            options: options.clone(),
        })
    }

    /// Runs the task again from scratch: every input taken from its live ref or made again.
    pub(crate) fn run<'a>(self: &'a Arc<Self>, client: &'a Client) -> BoxFuture<'a, Resolution> {
        async move {
            let mut inputs = Vec::with_capacity(self.inputs.len());
            for input in &self.inputs {
                inputs.push(input.current(self.function, client).await?);
            }
            self.submit(client, inputs).await
        }
        .boxed()
    }

    /// Submits the task with `inputs`: again as its options allow when it fails, and again
    /// after rebuilding an input that a node reports lost.
    pub(crate) async fn submit(
        &self,
        client: &Client,
        mut inputs: Vec<manta_engine::ObjectRef>,
    ) -> Resolution {
        let mut failures = 0;
        // Each input may be lost once per submission; more means its rebuilds keep failing.
        let mut rebuilds = 0;
        loop {
            let error = match client.submit(self.spec(inputs.clone())).await {
                Ok(outcome) => return Ok(outcome.output),
                Err(error) => error,
            };
            let lost_input = lost_object(&error)
                .and_then(|object| inputs.iter().position(|input| input.id() == object));
            match lost_input {
                Some(index) if rebuilds <= self.inputs.len() => {
                    rebuilds += 1;
                    let input = &self.inputs[index];
                    tracing::debug!(
                        function = self.function,
                        argument = input.argument,
                        "an input was lost; rebuilding it"
                    );
                    inputs[index] = input
                        .rebuild(self.function, client, inputs[index].id())
                        .await?;
                }
                None if self.options.retry_exceptions
                    && failures < self.options.max_retries
                    && matches!(
                        error,
                        manta_scheduler::Error::UserFunction { .. }
                            | manta_scheduler::Error::UserPanic { .. }
                    ) =>
                {
                    failures += 1;
                    tracing::debug!("{} failed ({error}); retry {failures}", self.function);
                }
                _ => return Err(self.failed(error)),
            }
        }
    }

    /// Submits the task, which has no inputs, once; `setter` gets the outcome. No future and
    /// no retry of exceptions: what [`submit`](Self::submit) does for such a task, from a
    /// callback.
    pub(crate) fn submit_then(self: &Arc<Self>, client: &Client, setter: Setter) {
        debug_assert!(self.inputs.is_empty() && !self.options.retry_exceptions);
        let lineage = Arc::clone(self);
        client.submit_then(
            self.spec(Vec::new()),
            Box::new(move |outcome| {
                setter.set(outcome.map(|o| o.output).map_err(|e| lineage.failed(e)));
            }),
        );
    }

    /// The task to submit, with `inputs` as its input objects.
    fn spec(&self, inputs: Vec<manta_engine::ObjectRef>) -> TaskSpec {
        TaskSpec {
            function: self.function.to_string(),
            args: self.args.clone(),
            inputs,
            input_batch: None,
            resources: self.options.resources.clone(),
            max_retries: self.options.max_retries,
            label: self.function.to_string(),
        }
    }

    /// The task's failure as its caller sees it.
    fn failed(&self, error: manta_scheduler::Error) -> Error {
        Error::Task {
            function: self.function.to_string(),
            source: Arc::new(error),
        }
    }
}

impl Input {
    /// The input's object now: its live ref's, or a new one made from its lineage.
    async fn current(
        &self,
        function: &'static str,
        client: &Client,
    ) -> Result<manta_engine::ObjectRef> {
        let made = match (UntypedRef::upgrade(&self.source), &self.lineage) {
            (Some(live), _) => live.resolution().await,
            (None, Some(lineage)) => lineage.run(client).await,
            (None, None) => Err(Error::Lost {
                object: "an input".into(),
                reason: "it was stored by `put` and every ref to it is gone".into(),
            }),
        };
        made.map_err(|source| self.failed(function, source))
    }

    /// Makes the input again after its copy `lost` was found gone.
    async fn rebuild(
        &self,
        function: &'static str,
        client: &Client,
        lost: ObjectId,
    ) -> Result<manta_engine::ObjectRef> {
        let made = match (UntypedRef::upgrade(&self.source), &self.lineage) {
            (Some(live), _) => live.rebuild(client, lost).await,
            (None, Some(lineage)) => lineage.run(client).await,
            (None, None) => Err(Error::Lost {
                object: lost.to_string(),
                reason: "it was stored by `put`, not made by a task, so it cannot be made again"
                    .into(),
            }),
        };
        made.map_err(|source| self.failed(function, source))
    }

    fn failed(&self, function: &'static str, source: Error) -> Error {
        Error::Argument {
            function: function.to_string(),
            argument: self.argument,
            source: Box::new(source),
        }
    }
}

/// The object a failure says is gone or unreachable, if it says so.
pub(crate) fn lost_object(error: &manta_scheduler::Error) -> Option<ObjectId> {
    match error {
        manta_scheduler::Error::FetchFailed { object, .. }
        | manta_scheduler::Error::ObjectLost { object, .. } => Some(*object),
        _ => None,
    }
}

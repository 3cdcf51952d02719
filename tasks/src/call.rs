//! One call's task as it is submitted, and its retries after the user's function failed.
//!
//! A call runs again after its function returned an error or panicked, as many times as its
//! options allow (`retry_exceptions` and `max_retries`, as in Ray). A lost input or a lost
//! output is not this module's business: every submission goes through the scheduler's lineage
//! layer ([`manta_scheduler::lineage`]), which makes lost inputs again before running the task
//! and records the task's lineage on its output, so that reading a lost output makes it again.

use std::sync::Arc;

use bytes::Bytes;
use manta_engine::TaskSpec;
use manta_scheduler::Client;

use crate::api::TaskOptions;
use crate::error::Error;
use crate::object_ref::{Resolution, Setter};

/// A call of a task function with its arguments encoded: what is submitted, and again.
pub(crate) struct Call {
    function: &'static str,
    args: Bytes,
    options: TaskOptions,
}

impl Call {
    /// A call of `function` with arguments `args`.
    pub(crate) fn new(function: &'static str, args: Bytes, options: &TaskOptions) -> Arc<Self> {
        Arc::new(Self {
            function,
            args,
            options: options.clone(),
        })
    }

    /// Submits the task with `inputs`, again as its options allow when the function fails.
    pub(crate) async fn submit(
        &self,
        client: &Client,
        inputs: Vec<manta_engine::ObjectRef>,
    ) -> Resolution {
        let mut failures = 0;
        loop {
            let error = match client.submit(self.spec(inputs.clone())).await {
                Ok(outcome) => return Ok(outcome.output),
                Err(error) => error,
            };
            let retry = self.options.retry_exceptions
                && failures < self.options.max_retries
                && matches!(
                    error,
                    manta_scheduler::Error::UserFunction { .. }
                        | manta_scheduler::Error::UserPanic { .. }
                );
            if !retry {
                return Err(self.failed(error));
            }
            failures += 1;
            tracing::debug!("{} failed ({error}); retry {failures}", self.function);
        }
    }

    /// Submits the task, which has no inputs, once; `setter` gets the outcome. No future and
    /// no retry of exceptions: what [`submit`](Self::submit) does for such a task, from a
    /// callback.
    pub(crate) fn submit_then(self: &Arc<Self>, client: &Client, setter: Setter) {
        debug_assert!(!self.options.retry_exceptions);
        let call = Arc::clone(self);
        client.submit_then(
            self.spec(Vec::new()),
            Box::new(move |outcome| {
                setter.set(outcome.map(|o| o.output).map_err(|e| call.failed(e)));
            }),
        );
    }

    /// The task to submit, with `inputs` as its input objects.
    fn spec(&self, inputs: Vec<manta_engine::ObjectRef>) -> TaskSpec {
        TaskSpec {
            function: self.function.to_string(),
            args: self.args.clone(),
            inputs,
            input_batches: None,
            batched_inputs: None,
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

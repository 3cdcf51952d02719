//! Lineage: the record of how an object was made, kept by its owner, so that a copy lost with
//! its node can be made again.
//!
//! A task's output ref carries the task's [`Lineage`]: its function, arguments and options,
//! and for each input a weak link to the input's ref and the input's own lineage. Lineage keeps
//! task descriptions, never objects: an input that no ref holds any more is freed as usual and
//! made again from its own lineage if it is ever needed (Ray calls this object
//! reconstruction; like Ray's, it needs tasks that give the same output when run again).
//!
//! Lineage costs memory for as long as refs to the objects live (about the size of a task's
//! arguments per object). The whole process keeps at most [`max_lineage_bytes`]
//! (`MANTA_MAX_LINEAGE_BYTES`, 1 GiB unless set, or [`set_max_lineage_bytes`]); past it, new
//! outputs are made without lineage and, if lost, fail naming the cap (Ray's
//! `max_lineage_bytes` does the same).
//!
//! Making an object again is the scheduler's job (`manta_scheduler::Client` submits the task
//! anew, remaking its lost inputs first); this module is the record it works from.
//!
//! ```
//! use manta_engine::lineage::Lineage;
//! use manta_engine::{Resources, TaskSpec};
//!
//! let spec = TaskSpec {
//!     function: "double".into(),
//!     args: bytes::Bytes::from_static(b"21"),
//!     inputs: Vec::new(),
//!     input_batches: None,
//!     batched_inputs: None,
//!     resources: Resources::default(),
//!     max_retries: 3,
//!     label: "double 21".into(),
//! };
//! let lineage = Lineage::of(&spec).unwrap();
//! let again = lineage.task(Vec::new());
//! assert_eq!((again.function, again.args), (spec.function, spec.args));
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;

use crate::ids::ObjectId;
use crate::object_ref::{ObjectRef, RefInner};
use crate::resources::Resources;
use crate::task::TaskSpec;

/// The environment variable that sets [`max_lineage_bytes`].
pub const MAX_LINEAGE_BYTES_ENV: &str = "MANTA_MAX_LINEAGE_BYTES";

/// The lineage kept at most when `MANTA_MAX_LINEAGE_BYTES` is not set.
pub const DEFAULT_MAX_LINEAGE_BYTES: u64 = 1 << 30;

/// Lineage bytes alive in this process.
static LINEAGE_BYTES: AtomicU64 = AtomicU64::new(0);

/// The cap; `u64::MAX` means "not read from the environment yet".
static MAX_BYTES: AtomicU64 = AtomicU64::new(u64::MAX);

/// Whether the cap was reported as reached (once per process).
static CAP_REPORTED: AtomicBool = AtomicBool::new(false);

/// How an object was made: one task, and where its inputs came from.
pub struct Lineage {
    function: String,
    args: Bytes,
    input_batches: Option<std::ops::Range<u32>>,
    batched_inputs: Option<u32>,
    resources: Resources,
    max_retries: u32,
    label: String,
    inputs: Vec<LineageInput>,
    /// What this record counts against the cap.
    bytes: u64,
}

/// One input of a task: its ref while any clone lives, and how it was made.
pub struct LineageInput {
    id: ObjectId,
    live: Weak<RefInner>,
    lineage: Option<Arc<Lineage>>,
}

impl Lineage {
    /// The lineage of `spec` (whose inputs are refs, each carrying its own lineage if it has
    /// one); `None` when the process already keeps [`max_lineage_bytes`] of lineage.
    pub fn of(spec: &TaskSpec) -> Option<Arc<Self>> {
        let bytes = (std::mem::size_of::<Self>()
            + spec.function.len()
            + spec.args.len()
            + spec.label.len()
            + spec.inputs.len() * std::mem::size_of::<LineageInput>()) as u64;
        let kept = LINEAGE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if kept > max_lineage_bytes() {
            LINEAGE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
            if !CAP_REPORTED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "{} bytes of lineage kept: outputs made from now on cannot be made again \
                     if lost (raise {MAX_LINEAGE_BYTES_ENV} to keep more)",
                    max_lineage_bytes()
                );
            }
            return None;
        }
        let inputs = spec
            .inputs
            .iter()
            .map(|input| LineageInput {
                id: input.id(),
                live: input.downgrade(),
                lineage: input.lineage(),
            })
            .collect();
        Some(Arc::new(Self {
            function: spec.function.clone(),
            args: spec.args.clone(),
            input_batches: spec.input_batches.clone(),
            batched_inputs: spec.batched_inputs,
            resources: spec.resources.clone(),
            max_retries: spec.max_retries,
            label: spec.label.clone(),
            inputs,
            bytes,
        }))
    }

    /// The task again, with `inputs` (one per [`inputs`](Self::inputs), in order).
    pub fn task(&self, inputs: Vec<ObjectRef>) -> TaskSpec {
        debug_assert_eq!(inputs.len(), self.inputs.len());
        TaskSpec {
            function: self.function.clone(),
            args: self.args.clone(),
            inputs,
            input_batches: self.input_batches.clone(),
            batched_inputs: self.batched_inputs,
            resources: self.resources.clone(),
            max_retries: self.max_retries,
            label: self.label.clone(),
        }
    }

    /// The task's inputs, in order.
    pub fn inputs(&self) -> &[LineageInput] {
        &self.inputs
    }

    /// How often the task may run again after its worker or node failed.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The task's label ("block 3 of stage 1 (ReadParquet->Map)").
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Lineage {
    fn drop(&mut self) {
        LINEAGE_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl LineageInput {
    /// The input's id as the task first saw it.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The input's ref (its newest copy), if any clone of it is still alive.
    pub fn live(&self) -> Option<ObjectRef> {
        ObjectRef::upgrade(&self.live).map(|input| input.current())
    }

    /// How the input was made; `None` for a `put` value or one made past the cap.
    pub fn lineage(&self) -> Option<&Arc<Lineage>> {
        self.lineage.as_ref()
    }
}

/// Lineage bytes this process keeps now.
pub fn lineage_bytes() -> u64 {
    LINEAGE_BYTES.load(Ordering::Relaxed)
}

/// The most lineage this process keeps (see the module doc).
pub fn max_lineage_bytes() -> u64 {
    let cap = MAX_BYTES.load(Ordering::Relaxed);
    if cap != u64::MAX {
        return cap;
    }
    let from_env = std::env::var(MAX_LINEAGE_BYTES_ENV)
        .ok()
        .and_then(|value| crate::parse_bytes(&value).ok())
        .unwrap_or(DEFAULT_MAX_LINEAGE_BYTES)
        .min(u64::MAX - 1);
    MAX_BYTES.store(from_env, Ordering::Relaxed);
    from_env
}

/// Sets the most lineage this process keeps from now on (0 keeps none).
pub fn set_max_lineage_bytes(bytes: u64) {
    MAX_BYTES.store(bytes.min(u64::MAX - 1), Ordering::Relaxed);
    CAP_REPORTED.store(false, Ordering::Relaxed);
}

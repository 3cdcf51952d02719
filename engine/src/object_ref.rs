//! [`ObjectRef`]: the typed, reference-counted handle a program holds to an object.
//!
//! An object lives in one node's store; the ref knows the object's id and where it lives. Refs
//! are counted the way `Arc`s are: cloning is cheap, and when the last clone drops, the ref's
//! [`ReleaseObject`] hook tells the store (or, on a cluster, the node holding the object) that
//! nobody needs it any more. This is Ray's ownership model: the process that created the ref owns
//! the object's lifetime.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, Weak};

use crate::ids::{NodeId, ObjectId};
use crate::lineage::Lineage;

/// Where an object lives: a node, and that node's Flight address for pulling it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The node whose store holds the object.
    pub node: NodeId,
    /// The node's Arrow Flight endpoint (`http://host:port`); empty in embedded mode.
    pub flight_address: Arc<str>,
}

/// Told when the last reference to an object is dropped.
pub trait ReleaseObject: Send + Sync {
    /// Nobody holds `id` any more; it may be freed.
    fn release(&self, id: ObjectId, location: &Location);
}

/// What is known about a stored object without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's id.
    pub id: ObjectId,
    /// Where it lives.
    pub location: Location,
    /// Its size in the store.
    pub size_bytes: u64,
    /// Rows, for a block; 0 for bytes.
    pub num_rows: u64,
}

pub(crate) struct RefInner {
    meta: ObjectMeta,
    releaser: Option<Arc<dyn ReleaseObject>>,
    /// The value itself, for a small task result that travelled back with its answer.
    inline: Option<bytes::Bytes>,
    /// How the object was made, for a task's output (see [`crate::lineage`]).
    lineage: OnceLock<Arc<Lineage>>,
    /// The copy made again after this one was found lost.
    replacement: OnceLock<ObjectRef>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        if let Some(releaser) = &self.releaser {
            releaser.release(self.meta.id, &self.meta.location);
        }
    }
}

/// A handle to an object of type `T` (a [`crate::Block`], or a serde value).
///
/// Clones share one count; the object is released when the last clone drops.
pub struct ObjectRef<T = crate::Object> {
    inner: Arc<RefInner>,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// A counted ref: `releaser` is told when the last clone drops.
    pub fn new(meta: ObjectMeta, releaser: Arc<dyn ReleaseObject>) -> Self {
        Self {
            inner: Arc::new(RefInner {
                meta,
                releaser: Some(releaser),
                inline: None,
                lineage: OnceLock::new(),
                replacement: OnceLock::new(),
            }),
            _type: PhantomData,
        }
    }

    /// A ref that releases nothing (for objects whose lifetime someone else manages).
    pub fn borrowed(meta: ObjectMeta) -> Self {
        Self {
            inner: Arc::new(RefInner {
                meta,
                releaser: None,
                inline: None,
                lineage: OnceLock::new(),
                replacement: OnceLock::new(),
            }),
            _type: PhantomData,
        }
    }

    /// A ref to a small bytes object held right here (a task result that came back with its
    /// answer): reading it fetches nothing, and nothing is freed when it drops.
    pub fn inline(meta: ObjectMeta, value: bytes::Bytes) -> Self {
        Self {
            inner: Arc::new(RefInner {
                meta,
                releaser: None,
                inline: Some(value),
                lineage: OnceLock::new(),
                replacement: OnceLock::new(),
            }),
            _type: PhantomData,
        }
    }

    /// The object's bytes, if it is held inline ([`ObjectRef::inline`]).
    pub fn inline_value(&self) -> Option<&bytes::Bytes> {
        self.inner.inline.as_ref()
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.meta.id
    }

    /// Where the object lives.
    pub fn location(&self) -> &Location {
        &self.inner.meta.location
    }

    /// Everything known about the object.
    pub fn meta(&self) -> &ObjectMeta {
        &self.inner.meta
    }

    /// How the object was made, if it is a task's output whose lineage was kept.
    pub fn lineage(&self) -> Option<Arc<Lineage>> {
        self.inner.lineage.get().cloned()
    }

    /// Records how the object was made (once; later calls change nothing).
    pub fn set_lineage(&self, lineage: Arc<Lineage>) {
        let _ = self.inner.lineage.set(lineage);
    }

    /// The newest copy of the object: this ref, or the copy made again after it was lost (and
    /// after that one was lost, its replacement, and so on).
    pub fn current(&self) -> ObjectRef<T> {
        let mut current = self.cast();
        while let Some(next) = current.inner.replacement.get() {
            current = next.cast();
        }
        current
    }

    /// Records `copy` as the object made again after this copy was lost, so that every
    /// holder of this ref reads the new one ([`current`](Self::current)). Once per ref.
    pub fn set_replacement(&self, copy: ObjectRef) {
        if !Arc::ptr_eq(&self.inner, &copy.inner) {
            let _ = self.inner.replacement.set(copy);
        }
    }

    /// A link to this ref that does not keep the object alive.
    pub(crate) fn downgrade(&self) -> Weak<RefInner> {
        Arc::downgrade(&self.inner)
    }

    /// The ref `weak` links to, if any clone of it is alive.
    pub(crate) fn upgrade(weak: &Weak<RefInner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self {
            inner,
            _type: PhantomData,
        })
    }

    /// The same ref, typed as `U`. The count is shared.
    pub fn cast<U>(&self) -> ObjectRef<U> {
        ObjectRef {
            inner: Arc::clone(&self.inner),
            _type: PhantomData,
        }
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({} on {:?})", self.id(), self.location().node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<ObjectId>>);

    impl ReleaseObject for Recorder {
        fn release(&self, id: ObjectId, _location: &Location) {
            self.0.lock().push(id);
        }
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            id: ObjectId::random(),
            location: Location {
                node: NodeId::random(),
                flight_address: "".into(),
            },
            size_bytes: 10,
            num_rows: 1,
        }
    }

    #[test]
    fn released_once_when_last_clone_drops() {
        let recorder = Arc::new(Recorder::default());
        let r: ObjectRef = ObjectRef::new(meta(), Arc::clone(&recorder) as _);
        let id = r.id();
        let clone = r.clone();
        let typed: ObjectRef<i64> = r.cast();
        drop(r);
        drop(clone);
        assert!(recorder.0.lock().is_empty());
        drop(typed);
        assert_eq!(*recorder.0.lock(), vec![id]);
    }

    #[test]
    fn a_replaced_ref_leads_to_its_newest_copy_and_lineage_keeps_no_input_alive() {
        let recorder = Arc::new(Recorder::default());
        let input: ObjectRef = ObjectRef::new(meta(), Arc::clone(&recorder) as _);
        let spec = crate::TaskSpec {
            function: "f".into(),
            args: bytes::Bytes::new(),
            inputs: vec![input.clone()],
            input_batches: None,
            batched_inputs: None,
            resources: crate::Resources::default(),
            max_retries: 0,
            label: "f".into(),
        };
        let lineage = Lineage::of(&spec).unwrap();
        drop(spec);
        let output: ObjectRef = ObjectRef::new(meta(), Arc::clone(&recorder) as _);
        output.set_lineage(Arc::clone(&lineage));
        assert_eq!(lineage.inputs()[0].live().unwrap().id(), input.id());

        let (second, third): (ObjectRef, ObjectRef) = (
            ObjectRef::new(meta(), Arc::clone(&recorder) as _),
            ObjectRef::new(meta(), Arc::clone(&recorder) as _),
        );
        output.set_replacement(second.clone());
        second.set_replacement(third.clone());
        assert_eq!(output.current().id(), third.id());
        assert!(output.lineage().is_some());

        let input_id = input.id();
        drop(input);
        assert_eq!(*recorder.0.lock(), vec![input_id], "lineage holds no input");
        assert!(lineage.inputs()[0].live().is_none());
        assert_eq!(lineage.inputs()[0].id(), input_id);
    }
}

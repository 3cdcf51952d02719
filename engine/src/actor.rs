//! The actor instances living in this process, by id.
//!
//! An actor is a value built by its constructor task and then changed by its method tasks, one
//! at a time. The process that runs them (a dedicated worker process on a cluster, a dedicated
//! thread embedded) keeps the value here between calls: the constructor task [`insert`]s it, each
//! method task borrows it [`with`] its id, and killing the actor [`remove`]s it. A method that
//! finds no instance (its worker was restarted and the constructor has not run there) fails
//! with a clear error instead of touching another actor's state.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::ids::ActorId;

type Instance = Arc<Mutex<Box<dyn Any + Send>>>;

static INSTANCES: LazyLock<Mutex<HashMap<ActorId, Instance>>> = LazyLock::new(Default::default);

/// Keeps `instance` as actor `id`'s state (replacing an older one, after a restart).
pub fn insert(id: ActorId, instance: Box<dyn Any + Send>) {
    INSTANCES.lock().insert(id, Arc::new(Mutex::new(instance)));
}

/// Drops actor `id`'s state; whether there was one.
pub fn remove(id: ActorId) -> bool {
    INSTANCES.lock().remove(&id).is_some()
}

/// Runs `f` on actor `id`'s state, which must be a `T`.
pub fn with<T: Any, R>(id: ActorId, class: &str, f: impl FnOnce(&mut T) -> R) -> Result<R> {
    let instance = INSTANCES.lock().get(&id).cloned().ok_or_else(|| {
        Error::Internal(format!(
            "actor {id:?} ({class}) has no instance in this process: it was killed, or its \
             constructor has not run here"
        ))
    })?;
    let mut instance = instance.lock();
    let state = instance
        .downcast_mut::<T>()
        .ok_or_else(|| Error::Internal(format!("actor {id:?} is not a {class}")))?;
    Ok(f(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_kept_borrowed_and_removed_by_id() {
        let (a, b) = (ActorId::random(), ActorId::random());
        insert(a, Box::new(10_i64));
        insert(b, Box::new(String::from("b")));
        assert_eq!(
            with(a, "i64", |n: &mut i64| {
                *n += 1;
                *n
            })
            .unwrap(),
            11
        );
        assert_eq!(with(a, "i64", |n: &mut i64| *n).unwrap(), 11);
        assert!(
            with(b, "i64", |n: &mut i64| *n)
                .unwrap_err()
                .to_string()
                .contains("not a i64")
        );
        assert!(remove(a));
        assert!(!remove(a));
        let gone = with(a, "Counter", |n: &mut i64| *n)
            .unwrap_err()
            .to_string();
        assert!(
            gone.contains("Counter") && gone.contains("no instance"),
            "{gone}"
        );
    }
}

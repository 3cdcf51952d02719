//! A gate a test's remote functions wait at until the test opens it.
//!
//! Each test that gates calls has a `static` gate of its own, so that no test opens another's:
//!
//! ```ignore
//! static GATE: Gate = Gate::new();
//!
//! #[manta::remote]
//! fn behind_gate(value: i64) -> i64 {
//!     GATE.pass();
//!     value
//! }
//! // ... submit calls, check they are not done, then:
//! GATE.open();
//! ```

use std::sync::{Condvar, Mutex};

/// A gate closed until [`Gate::open`]; see the module documentation.
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// A closed gate.
    pub const fn new() -> Self {
        Self {
            open: Mutex::new(false),
            opened: Condvar::new(),
        }
    }

    /// Returns once the gate is open.
    pub fn pass(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    /// Opens the gate: every call waiting at it goes on, and later ones pass at once.
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

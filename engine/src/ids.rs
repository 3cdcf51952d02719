//! Identifiers: objects, tasks, actors, nodes and jobs.
//!
//! Every id is 16 random bytes, printed as 32 hex digits. Random ids need no coordination, so a
//! worker on any node can name the object it is about to create without asking anyone, and the
//! same id names the object's file in shared memory, its Flight ticket and its row in a table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(rand::random())
            }

            /// The id's 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The id made of these 16 bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// Parses the id from exactly 16 bytes (as sent on the wire).
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let bytes: [u8; 16] = bytes.try_into().map_err(|_| Error::InvalidId {
                    kind: stringify!($name),
                    text: hex::encode(bytes),
                })?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({})"), hex::encode(&self.0[..6]))
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                let invalid = || Error::InvalidId { kind: stringify!($name), text: text.to_string() };
                let bytes = hex::decode(text).map_err(|_| invalid())?;
                Self::from_slice(&bytes).map_err(|_| invalid())
            }
        }
    };
}

define_id!(
    /// Names one immutable object in some node's object store.
    ObjectId,
    "Object"
);
define_id!(
    /// Names one execution of a function (a retry keeps the id).
    TaskId,
    "Task"
);
define_id!(
    /// Names one node (one node daemon, or the embedded runtime).
    NodeId,
    "Node"
);
define_id!(
    /// Names one actor: a stateful worker whose method calls run in order.
    ActorId,
    "Actor"
);

define_id!(
    /// Names one driver's job on a cluster.
    JobId,
    "Job"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = ObjectId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ObjectId>().unwrap(), id);
    }

    #[test]
    fn parse_rejects_bad_text() {
        assert!(matches!(
            "xyz".parse::<ObjectId>(),
            Err(Error::InvalidId { .. })
        ));
        assert!(matches!(
            "abcd".parse::<TaskId>(),
            Err(Error::InvalidId { .. })
        ));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(NodeId::random(), NodeId::random());
    }
}

//! Reading the objects of nodes on this machine straight from their shared memory.
//!
//! A node registers its store's session directories with the head: shared memory
//! (`/dev/shm/manta-<pid>-<random>`) and spill (on disk). When a driver is asked for an object
//! held by node N, it looks N's directories up (once per node, from the head's node list) and,
//! if they exist here and this user may open them — a node on the same machine, sharing this
//! `/dev/shm` — maps the object's file under a shared lock, as the node's own worker processes
//! do ([`ObjectDir::read_locked`]): from shared memory, else from the spill directory (the
//! page cache). No copy, and no byte through a socket, where Flight would have the node read
//! the file, send it and the driver decode a copy. This is Ray's driver reading its node's
//! plasma store.
//!
//! Both directories only ever hold complete files (each written under a temporary name and
//! renamed). The shared lock is what keeps the node from recycling a shared-memory file while
//! the mapping lives (see `manta_engine::store`'s recycling); a file renamed away or deleted
//! (spilled, restored, freed) is simply not found, or stays mapped whole. Anything that is not
//! a clean read — an object in neither place, a node whose process is gone (its session's
//! `.owner` lock is free), directories of another machine — falls back to Flight, which then
//! reports what is wrong.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use manta_engine::store::ObjectDir;
use manta_engine::{NodeId, Object, ObjectId};
use parking_lot::Mutex;

use crate::proto;

/// The shared-memory directories of the nodes seen so far that are on this machine.
#[derive(Debug, Default)]
pub struct LocalStores {
    /// Per node: its directories if they are here, `None` if not (or unknown to the head).
    dirs: Mutex<HashMap<NodeId, Option<Arc<NodeDirs>>>>,
}

/// A node's store directories on this machine.
#[derive(Debug)]
pub struct NodeDirs {
    shared: ObjectDir,
    spill: ObjectDir,
}

impl LocalStores {
    /// What is known of `node`: `None` if it has not been looked up yet.
    pub fn lookup(&self, node: NodeId) -> Option<Option<Arc<NodeDirs>>> {
        self.dirs.lock().get(&node).cloned()
    }

    /// Learns the directories of `nodes` (the head's list), and that `asked` is not here if
    /// the list does not have it.
    pub fn learn(&self, nodes: &[proto::NodeInfo], asked: NodeId) {
        let mut dirs = self.dirs.lock();
        for node in nodes {
            let Ok(id) = NodeId::from_slice(&node.node_id) else {
                continue;
            };
            let found = here(&node.shared_dir)
                .zip(here(&node.spill_dir))
                .map(|(shared, spill)| Arc::new(NodeDirs { shared, spill }));
            dirs.insert(id, found);
        }
        dirs.entry(asked).or_insert(None);
    }

    /// Object `id` read in place from `dirs`, or `None` (read it over Flight instead).
    pub fn read(dirs: &NodeDirs, id: ObjectId) -> Option<Object> {
        if !dirs.shared.owner_alive() {
            return None;
        }
        dirs.shared
            .read_locked(id)
            .or_else(|_| dirs.spill.read_locked(id))
            .ok()
    }
}

/// The session directory at `path` if it is on this machine and ours to read.
fn here(path: &str) -> Option<ObjectDir> {
    if path.is_empty() {
        return None;
    }
    let path = Path::new(path);
    // Readable (mode 0700, so only by the node's user) and a directory here.
    let readable = std::fs::read_dir(path).is_ok();
    let dir = ObjectDir::open(path);
    (readable && dir.owner_alive()).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use manta_engine::store::{ObjectStore, StoreConfig};

    /// How the head lists a node whose store is `store` (`None`: one on another machine).
    fn info(node: NodeId, store: Option<&ObjectStore>) -> proto::NodeInfo {
        let text = |p: &Path| p.to_str().unwrap().to_string();
        proto::NodeInfo {
            node_id: bytes::Bytes::copy_from_slice(node.as_bytes()),
            shared_dir: store.map_or("/nonexistent/manta-1-0".into(), |s| {
                text(s.shared_dir().unwrap())
            }),
            spill_dir: store.map_or("/nonexistent/manta-1-1".into(), |s| text(s.spill_dir())),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_store_on_this_machine_is_read_in_place_and_others_are_not() {
        let parent = tempfile::tempdir().unwrap();
        let spill = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(StoreConfig {
            budget_bytes: 4 << 20,
            shared_parent: Some(parent.path().to_path_buf()),
            spill_parent: spill.path().to_path_buf(),
        })
        .unwrap();
        // Two objects of 3 MiB in a 4 MiB store: the first is spilled to disk.
        let big = |byte| Object::Bytes(bytes::Bytes::from(vec![byte; 3 << 20]));
        let (spilled, resident) = (ObjectId::random(), ObjectId::random());
        store.put(spilled, big(1)).unwrap();
        store.put(resident, big(2)).unwrap();
        assert!(store.usage().spilled_bytes > 0, "{:?}", store.usage());
        let (here_node, elsewhere, unlisted) =
            (NodeId::random(), NodeId::random(), NodeId::random());
        let local = LocalStores::default();
        local.learn(
            &[info(here_node, Some(&store)), info(elsewhere, None)],
            unlisted,
        );
        assert!(matches!(local.lookup(elsewhere), Some(None)));
        assert!(matches!(local.lookup(unlisted), Some(None)));
        let dirs = local.lookup(here_node).flatten().expect("the store here");
        for (id, byte) in [(spilled, 1), (resident, 2)] {
            match LocalStores::read(&dirs, id) {
                Some(Object::Bytes(b)) => {
                    assert!(b.len() == 3 << 20 && b.iter().all(|&x| x == byte))
                }
                other => panic!("read {other:?}"),
            }
        }
        assert!(LocalStores::read(&dirs, ObjectId::random()).is_none());
        // Its owner gone (the store dropped: its sessions removed), nothing is read.
        drop(store);
        assert!(LocalStores::read(&dirs, resident).is_none());
    }
}

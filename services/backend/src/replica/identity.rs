//! A node's Raft id. Raft's safety rests on each voter remembering what it voted and what it
//! holds; a node that comes back on an empty volume (its pod rescheduled onto a new disk) has
//! forgotten both, so it must not vote as the member it was. It gets a new id instead, made at
//! random when its data directory is created, and the cluster replaces the old member with it
//! (`Replica::add_node`). The id lives in the data directory beside the log it belongs to.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::NodeId;

const FILE: &str = "raft-id";

/// The id of the node whose data directory is `data_dir`, made and stored (fsync'd) before its
/// log is first written if the directory has none.
pub fn load_or_create(data_dir: &Path, name: &str, has_log: bool) -> anyhow::Result<NodeId> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .trim()
                .parse::<NodeId>()
                .ok()
                .filter(|&id| id != 0)
                .with_context(|| format!("{} does not hold a Raft id", path.display()));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    // A log written before ids were stored was written under the id its name hashed to.
    let id = if has_log {
        legacy_id(name)
    } else {
        random_id()
    };
    store(data_dir, id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The id every node had before ids were stored: a hash of its name.
fn legacy_id(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// Never 0: a Raft message addressed to 0 comes from a sender that does not name its target.
fn random_id() -> NodeId {
    loop {
        let id = rand::rngs::OsRng.next_u64();
        if id != 0 {
            return id;
        }
    }
}

/// Writes the id to a temporary file, fsyncs it, renames it into place and fsyncs the
/// directory, so a crash leaves either no id or the whole one.
fn store(data_dir: &Path, id: NodeId) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{id}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_a_random_id_that_it_keeps() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let id = load_or_create(one.path(), "a1", false).unwrap();
        assert_eq!(load_or_create(one.path(), "a1", false).unwrap(), id);
        // The same name on an empty volume is another member.
        assert_ne!(load_or_create(two.path(), "a1", false).unwrap(), id);
        assert_ne!(id, legacy_id("a1"));
    }

    #[test]
    fn a_log_from_before_stored_ids_keeps_the_id_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_or_create(dir.path(), "a2", true).unwrap(),
            legacy_id("a2")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            format!("{}\n", legacy_id("a2"))
        );
    }

    #[test]
    fn a_damaged_id_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not a number").unwrap();
        let err = load_or_create(dir.path(), "a1", false).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not hold a Raft id"),
            "{err:#}"
        );
    }
}

//! A small real file system for tests of full disks: a tmpfs of a given size.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `mib` MiB mounted at a directory, unmounted when dropped. Needs root, as the
/// suite has (it also makes network namespaces).
pub struct SmallDisk {
    _dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mounted at a new temporary directory.
    pub fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut disk = SmallDisk::mount_at(&path, mib);
        disk._dir = Some(dir);
        disk
    }

    /// Mounted at `path`, which is made if it does not exist.
    pub fn mount_at(path: &Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the suite runs as root)"
        );
        SmallDisk {
            _dir: None,
            path: path.to_owned(),
        }
    }

    pub fn free(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(&self.path).unwrap();
        stats.blocks_available() * stats.fragment_size()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

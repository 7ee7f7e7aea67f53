//! Mounting, cutting the power and unmounting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nix::mount::{umount2, MntFlags};
use parking_lot::Mutex;

use crate::fs::{PowerLossFs, State};
use crate::{FsError, Image, Options, Stats};

/// Whether this process can mount a FUSE file system: `/dev/fuse` exists and the process is
/// root or `fusermount3` is installed.
pub fn availability() -> Result<(), FsError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(FsError::Unavailable {
            reason: "/dev/fuse does not exist".into(),
        });
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let fusermount = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()))
        .unwrap_or(false);
    if fusermount {
        Ok(())
    } else {
        Err(FsError::Unavailable {
            reason: "not root and no fusermount3 on PATH".into(),
        })
    }
}

/// A mounted powerloss-fs, served by a background thread of this process.
///
/// Dropping it without [`Mount::cut_power`] or [`Mount::unmount`] freezes and detaches it
/// (as a cut whose image is thrown away).
pub struct Mount {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Mount {
    /// Mounts `image` on the existing directory `mountpoint`: its current and durable states
    /// are both `image`.
    #[allow(clippy::self_named_constructors)] // `Mount::mount(..)` reads as what it does
    pub fn mount(mountpoint: &Path, image: Image, options: Options) -> Result<Mount, FsError> {
        let err = |source| FsError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        };
        let mountpoint = mountpoint.canonicalize().map_err(err)?;
        let state = Arc::new(Mutex::new(State::new(image, options)));
        let fs = PowerLossFs {
            state: state.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerloss".into()),
            MountOption::Subtype("powerloss".into()),
            MountOption::NoAtime,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        config.acl = SessionACL::Owner;
        let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(err)?;
        Ok(Mount {
            state,
            session: Some(session),
            mountpoint,
        })
    }

    /// Where it is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: atomically freezes the file system (every later operation on it fails
    /// with `EIO`), takes what is durable, and detaches the mount (lazily: processes that
    /// still hold files open keep failing until they close them). Returns the durable image.
    pub fn cut_power(mut self) -> Result<Image, FsError> {
        let image = self.state.lock().cut();
        self.detach()?;
        Ok(image)
    }

    /// Unmounts cleanly and returns the current tree as if everything had been synced. Files
    /// still open elsewhere make the unmount lazy.
    pub fn unmount(mut self) -> Result<Image, FsError> {
        let image = self.state.lock().current();
        self.detach()?;
        Ok(image)
    }

    /// Limits the total current size of the files to `bytes` (`None`: unlimited): a write,
    /// truncate or `fallocate` that would exceed it fails with `ENOSPC`. Lowering it below
    /// what is used already only refuses further growth.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().set_capacity(bytes);
    }

    /// Total current size of the files (what the capacity limits).
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.state.lock().stats
    }

    /// Detaches the mount point (lazy unmount) and lets the session thread end by itself when
    /// the kernel drops the connection (once no process holds a file open in it).
    fn detach(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let res = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        // The session's own unmount-on-drop finds nothing mounted any more; its thread is
        // detached and ends when the kernel closes the connection.
        drop(session);
        res.map_err(|e| FsError::Unmount {
            mountpoint: self.mountpoint.clone(),
            source: e.into(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.state.lock().cut();
            let _ = self.detach();
        }
    }
}

//! # powerloss-fs
//!
//! A FUSE file system for tests that models a disk whose volatile write cache is lost when the
//! power is cut (in the spirit of LazyFS, which Jepsen uses for the same purpose).
//!
//! The whole tree lives in memory, in two versions:
//!
//! * the **current** state: what every read, `stat` and `readdir` sees, updated by each write,
//!   truncate, create, unlink, rename, `mkdir` and `rmdir`;
//! * the **durable** state: what survives a power cut. It only changes when a program asks:
//!   `fsync`/`fdatasync` of a file makes that file's current data and size durable (only its
//!   dirty 4 KiB pages are copied); `fsync` of a directory (`fsyncdir`) makes that directory's
//!   current entries durable (creates, unlinks and renames into or out of it). With
//!   [`Options::ext4_like`], `fsync` of a file also makes its name(s) in its parent directory
//!   durable (and drops its old names), as ext4's journal effectively does.
//!
//! [`Mount::cut_power`] freezes the file system atomically (every later operation fails with
//! `EIO`), takes the durable [`Image`] and detaches the mount; [`Mount::mount`] of that image
//! reproduces exactly the durable state. A file whose directory entry is durable but whose data
//! was never synced comes back with its last synced data (empty if never synced).
//! `sync_file_range` never reaches a FUSE file system, so, as on a real disk, it makes nothing
//! durable. With [`Options::torn_seed`], a seeded random half of the dirty (unsynced) pages of
//! each file survives the cut as well (a torn volatile cache).
//!
//! Files are opened in direct-I/O mode, so every read and write reaches the file system (no
//! kernel page cache, no write-back cache); shared writable `mmap` is therefore not supported.
//! Locks (`flock`, `fcntl`) are handled by the kernel, locally.
//!
//! Mounting needs `/dev/fuse` and either root (the direct `mount(2)` path) or `fusermount3`.
//! [`availability`] says whether this process can mount.
#![deny(missing_docs)]

mod fs;
pub mod harness;
mod image;
mod mount;

pub use image::{Entry, Image};
pub use mount::{availability, Mount};

use std::path::PathBuf;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The file system could not be mounted.
    #[error("cannot mount a powerloss-fs on {mountpoint}")]
    Mount {
        /// Where it was to be mounted.
        mountpoint: PathBuf,
        /// The error of the mount.
        #[source]
        source: std::io::Error,
    },
    /// The file system could not be unmounted.
    #[error("cannot unmount the powerloss-fs on {mountpoint}")]
    Unmount {
        /// Where it is mounted.
        mountpoint: PathBuf,
        /// The error of the unmount.
        #[source]
        source: std::io::Error,
    },
    /// This process cannot mount FUSE file systems at all (no `/dev/fuse`, not root and no
    /// `fusermount3`).
    #[error("FUSE is not available here: {reason}")]
    Unavailable {
        /// What is missing.
        reason: String,
    },
}

/// How a mounted file system behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    ext4_like: bool,
    torn_seed: Option<u64>,
    capacity: Option<u64>,
}

impl Options {
    /// Strict POSIX semantics (the default): a new or renamed name is durable only after an
    /// `fsync` of its directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// `true`: `fsync` of a file also makes its directory entries durable (its current names,
    /// and the removal of its old ones), like ext4's journal commit. Default `false`.
    pub fn ext4_like(mut self, on: bool) -> Self {
        self.ext4_like = on;
        self
    }

    /// `Some(seed)`: at [`Mount::cut_power`], each dirty (written but unsynced) 4 KiB page of a
    /// file whose data is durable survives with probability 1/2, chosen by `seed` (a torn
    /// volatile cache). `None` (default): every unsynced page is lost.
    pub fn torn_seed(mut self, seed: Option<u64>) -> Self {
        self.torn_seed = seed;
        self
    }

    /// The initial capacity (see [`Mount::set_capacity`]). Default `None` (unlimited).
    pub fn capacity(mut self, bytes: Option<u64>) -> Self {
        self.capacity = bytes;
        self
    }

    /// Whether [`Options::ext4_like`] is on.
    pub fn is_ext4_like(&self) -> bool {
        self.ext4_like
    }
}

/// Counters of a mounted file system, for test assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync` and `fdatasync` calls on files that succeeded.
    pub fsyncs: u64,
    /// `fsync` calls on directories that succeeded.
    pub fsyncdirs: u64,
    /// Bytes accepted by successful writes.
    pub bytes_written: u64,
    /// Writes, truncates and `fallocate`s refused with `ENOSPC`.
    pub enospc: u64,
    /// Operations refused with `EIO` because the power was cut.
    pub after_cut: u64,
}

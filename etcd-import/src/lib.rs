//! # etcd-import
//!
//! Imports an etcd 3.4-3.6 database — a data directory's `member/snap/db` or an
//! `etcdctl snapshot save` file — into a new rusd store, keeping every revision, create/mod
//! revision, version, value, lease attachment, lease, the compaction revision and the key
//! history that etcd kept.
//!
//! * [`bbolt`]: a small read-only bbolt page reader (bounded by the file size on every path).
//! * [`etcd`]: decodes and validates etcd's `key`, `meta` and `lease` buckets.
//! * [`auth`](mod@auth): decodes etcd's `auth`, `authUsers` and `authRoles` buckets (users with
//!   their bcrypt hashes and roles, roles with their key permissions, the enabled flag and the
//!   auth revision) into `rusd-auth`'s [`rusd_auth::AuthDump`], and encodes them back.
//! * [`import`](mod@import): writes the rows into rusd's `kv`, `meta` and `lease` trees in bounded batches,
//!   etcd's auth state into the `auth` tree through `rusd-auth`'s storage
//!   ([`rusd_auth::persist::restore_rows`]), and reopens the store to check it recovers them.
//! * [`bbolt_write`]: a small bbolt writer (sorted pairs packed into leaf, branch and overflow
//!   pages, freelist and meta pages).
//! * [`export`](mod@export): writes a rusd store, its auth state included, as an etcd 3.4 bbolt
//!   file or `etcdctl snapshot save` file that `etcdctl snapshot restore` accepts.
//! * [`snapshot`]: offline save / restore / status of rusd's portable snapshots (every tree,
//!   the `auth` tree included).
//! * [`status`]: `snapshot status` figures and etcdctl's renderings of them.
//!
//! The source is read and validated completely before anything is written; a corrupt,
//! truncated or foreign file is an [`ImportError`] and the target stays untouched.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod bbolt;
pub mod bbolt_write;
pub mod cli;
pub mod error;
pub mod etcd;
pub mod export;
pub mod frame;
pub mod import;
pub mod snapshot;
pub mod status;

pub use auth::AuthFigures;
pub use error::ImportError;
pub use etcd::{parse_etcd_db, EtcdData, EtcdLease, KvRow};
pub use export::{export, ExportSummary};
pub use import::{import, read_etcd, ImportSummary};
pub use status::{etcd_status, render_status, EtcdStatus, StatusFormat};

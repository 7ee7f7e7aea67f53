//! The state machine: an [`MvccStore`] that applies committed entries, and its snapshots.
//!
//! # Apply
//! The store applies in buffered mode ([`CommitMode::Backend`](mvcc_core::CommitMode) over an
//! engine opened with `Durability::Buffered`): durability comes from the raft log, flushed
//! before an entry can commit. Before each entry the store is given the entry's log id and the
//! last membership ([`MvccStore::set_apply_meta`]), which it writes in the same atomic backend
//! write as the entry's data (etcd's consistent index); membership entries write it alone, and
//! an apply call whose last entry created no revision ends with one write of it (so that it
//! names the last applied entry even when that entry wrote nothing). On open, [`RaftStateMachine::applied_state`] reads it back
//! and openraft re-applies the committed entries after it. An entry that writes nothing (a
//! failed compare, a rejected request, a blank entry) may be re-applied after a crash: it
//! writes nothing again, so replay is exact (no revision is created twice). A
//! [`Command::Batch`] entry records after each of its commands how many are done
//! ([`ApplyMeta::partial`]), and a replay skips those. A run of consecutive plain puts in a
//! batch (the bulk of a busy leader's batches) is applied with **one** engine write
//! (`MvccStore::kv_put_group`: the same revisions and responses as one put after the other),
//! its record covering the whole run; every other command commits its own write. One engine
//! write per put made sled roll its log buffer twice per put (two `pwrite` +
//! `sync_file_range` each: sled's `apply_batch` rolls before and after), and redb commit one
//! transaction per put.
//!
//! [`Command::Auth`] entries apply to the [`AuthStore`] opened on the same backend: the auth
//! rows and the apply record go in **one** atomic backend write
//! (`AuthStore::apply_with_batch`), so a replay never applies an auth change twice (the auth
//! revision is bumped once); a refused or no-op auth command writes nothing and is replayed
//! to the same result. The requester's admin permission is checked at apply time with the user
//! name the entry carries (etcd `authApplierV3`). [`Command::Authenticate`] registers a simple
//! token `<prefix>.<log index>` in memory only (as etcd's simple tokens); a snapshot install
//! reloads the auth store from the image (`AuthStore::recover`).
//!
//! A [`Command::Compaction`] entry puts the compaction in force (its marker, with the apply
//! record, in one write; reads below it fail from then on) and hands the deletion of its rows
//! to the store's compaction thread (`MvccStore::kv_compact_in_background`), as etcd deletes
//! them in the background: the entries after it are applied meanwhile instead of waiting for
//! the last row. The deletion batches carry no apply record; after a crash the store's
//! reopen finishes the compaction (`scheduledCompactRev` above `finishedCompactRev`). A
//! client's Compact returns once the rows are gone on the member that serves it.
//!
//! Applying is deterministic: the same entries give the same revisions, responses and backend
//! rows on every member (the rows once the background compactions are done). Nothing time-based is decided here: only the leader proposes
//! [`Command::LeaseRevoke`] for expired leases (see [`crate::node`]).
//!
//! Request-level failures ([`CommandError`]) are answered to the proposer; failures of the
//! store itself (storage errors, a failed store) are returned to openraft, which stops the
//! member rather than let it diverge.
//!
//! # Snapshots
//! A snapshot is the engine-portable backend snapshot (`Backend::snapshot_to`), so members may
//! run different engines and converge to byte-identical snapshots (once their background
//! compactions finished). Its raft metadata (last log
//! id, membership) is read from the apply metadata row *inside* the image, so it matches the
//! data exactly even while entries keep being applied. After the image is taken the store's
//! backend is flushed, so the state machine on disk is at least as new as any snapshot that
//! lets openraft purge the log. Installing a snapshot restores the backend from it
//! (`Backend::restore_validated`), flushes it and reloads the same [`MvccStore`] from it
//! ([`MvccStore::reload`]): every holder of the store keeps a valid handle; its watchers end
//! (their clients re-watch from their revision, as after a restart).
//!
//! ## Where snapshots live, and what memory they take
//! Snapshots are files, never images in memory (openraft's `SnapshotData` is a
//! [`tokio::fs::File`]). A member keeps them in `<data-dir>/raft-snap` ([`SNAPSHOT_DIR`],
//! [`StateMachine::open_with_snapshot_dir`]; [`StateMachine::open`] uses a private temporary
//! directory deleted with the state machine):
//!
//! * **Build** (every `--snapshot-count` entries): `Backend::snapshot_to` streams through a
//!   1 MiB write buffer into `build-<n>.tmp`, which is fsynced, read once more to check it and
//!   find its metadata, then renamed to `<n>-<snapshot id>.snap` next to its metadata
//!   `<n>-<snapshot id>.meta` (JSON; written and renamed first), and the directory fsynced.
//!   The previous snapshot's files are deleted as soon as the new one is in place, so the
//!   directory holds one snapshot (two while a newer one is being written).
//! * **Send**: [`get_current_snapshot`](RaftStateMachine::get_current_snapshot) opens the
//!   file; openraft reads it chunk by chunk (`snapshot_max_chunk_size`, 3 MiB by default) for
//!   each lagging follower, so each transfer holds one chunk in memory. A file replaced
//!   meanwhile stays readable through the open handle until the transfer ends.
//! * **Receive**: [`begin_receiving_snapshot`](RaftStateMachine::begin_receiving_snapshot)
//!   gives a fresh `recv-<n>.tmp` that openraft writes each chunk into at its offset (the file
//!   of an earlier, abandoned receive is deleted then). [`install_snapshot`](
//!   RaftStateMachine::install_snapshot) fsyncs it, validates the whole file in a first pass
//!   (magic, structure, checksum: `ValidatedSnapshot::from_file`) **before** the backend is
//!   touched, restores from the same file in a second pass, and keeps it as the current
//!   snapshot. A corrupt file is deleted and refused with a storage error (the snapshot
//!   error as its source): openraft stops the member, whose store is unchanged; restarted, it
//!   asks for the snapshot again.
//!
//! Memory is therefore a few MiB of buffers (the 1 MiB write buffer, 256 KiB read buffers,
//! one chunk per transfer) whatever the store size; disk holds one image (two during a
//! build or an install).
//!
//! ## Crashes
//! A crash mid-build or mid-receive leaves a `*.tmp` file: opening the directory deletes
//! every temporary file, every image without its metadata and every snapshot but the newest
//! complete one, which becomes the current snapshot again (so a restarted leader can send it
//! without building one). A crash during the restore itself leaves the store as the engine's
//! `restore_validated` guarantees (each engine replaces its content all-or-nothing): at its
//! old state, and then the member's raft log is unchanged too and the leader sends the
//! snapshot again, or at the snapshot's state.

use std::io::{BufWriter, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mvcc_core::store::META_APPLY;
use mvcc_core::{MvccError, MvccStore, StoreConfig};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rusd_auth::{AuthConfig, AuthError, AuthInfo, AuthStore};
use serde::{Deserialize, Serialize};
use storage_api::snapshot::ValidatedSnapshot;
use storage_api::{Backend, Tree, WriteBatch};

use crate::snapshot_files::SnapshotFiles;
use crate::types::{
    Applied, Command, CommandError, CommandResponse, Entry, LogId, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};

/// What the store records with every applied write (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyMeta {
    /// The log id of the entry whose write carries this record.
    pub last_applied: Option<LogId>,
    /// The last membership applied at that point.
    pub last_membership: StoredMembership,
    /// Set while a [`Command::Batch`] entry is applied: its log id and how many of its
    /// commands the write carrying this record completes (`last_applied` is then the entry
    /// before it). After a crash the entry is applied again, skipping those.
    #[serde(default)]
    pub partial: Option<(LogId, usize)>,
}

impl ApplyMeta {
    /// Encodes the record (JSON: tiny, self-describing, readable with any tool).
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        serde_json::to_vec(self).map_err(|e| sm_write_err(&e))
    }

    /// Decodes a record written by [`encode`](Self::encode).
    pub fn decode(data: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(data).map_err(|e| sm_read_err(&e))
    }
}

fn sm_write_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn sm_read_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(e)).into()
}

fn snap_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(e)).into()
}

fn snap_write_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(e)).into()
}

/// The directory of a member's raft snapshots, inside its data directory.
pub const SNAPSHOT_DIR: &str = "raft-snap";

/// Write buffer of a snapshot build.
const SNAPSHOT_WRITE_BUFFER: usize = 1024 * 1024;

/// The index of the last entry a [`StateMachine`] applied, shared with its readers.
///
/// Updated when an apply completes, before openraft answers the proposers of the applied
/// entries; openraft's own metrics are published later, so a client that reads this member's
/// status right after a write could see them one entry behind its write. This one cannot.
#[derive(Debug, Clone, Default)]
pub struct AppliedIndex(Arc<AtomicU64>);

impl AppliedIndex {
    /// The index of the last applied entry (0: none).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, log_id: Option<LogId>) {
        self.0
            .store(log_id.map_or(0, |l| l.index), Ordering::Release);
    }
}

/// The openraft state machine over an [`MvccStore`].
#[derive(Debug)]
pub struct StateMachine<B: Backend> {
    store: Arc<MvccStore<B>>,
    auth: Arc<AuthStore<B>>,
    meta: ApplyMeta,
    snapshots: Arc<SnapshotFiles>,
    applied: AppliedIndex,
}

impl<B: Backend> StateMachine<B> {
    /// Opens the store over `backend` (with `config`; its commit mode should be
    /// [`CommitMode::Backend`](mvcc_core::CommitMode) over a buffered engine) and reads its
    /// apply metadata. The auth store of the same backend is opened with
    /// [`AuthConfig::default`] (see [`open_with_auth`](Self::open_with_auth)).
    pub fn open(backend: Arc<B>, config: StoreConfig) -> Result<Self, StorageError> {
        Self::open_with_auth(backend, config, None)
    }

    /// [`open`](Self::open) with the auth store that [`Command::Auth`] and
    /// [`Command::Authenticate`] apply to: `auth` must be opened on the same `backend` (its
    /// rows share the atomic writes of the apply record); `None` opens one with
    /// [`AuthConfig::default`] (simple tokens, 300 s TTL).
    ///
    /// Snapshots go to a private temporary directory, deleted with the state machine; a
    /// member keeps them in its data directory with
    /// [`open_with_snapshot_dir`](Self::open_with_snapshot_dir).
    pub fn open_with_auth(
        backend: Arc<B>,
        config: StoreConfig,
        auth: Option<Arc<AuthStore<B>>>,
    ) -> Result<Self, StorageError> {
        Self::open_in(backend, config, auth, None)
    }

    /// [`open_with_auth`](Self::open_with_auth) with the snapshots in `snapshot_dir` (created
    /// if needed; see the [module docs](self#snapshots)): the newest complete snapshot found
    /// there is the current one, every other file there is deleted.
    pub fn open_with_snapshot_dir(
        backend: Arc<B>,
        config: StoreConfig,
        auth: Option<Arc<AuthStore<B>>>,
        snapshot_dir: impl Into<PathBuf>,
    ) -> Result<Self, StorageError> {
        Self::open_in(backend, config, auth, Some(snapshot_dir.into()))
    }

    fn open_in(
        backend: Arc<B>,
        config: StoreConfig,
        auth: Option<Arc<AuthStore<B>>>,
        snapshot_dir: Option<PathBuf>,
    ) -> Result<Self, StorageError> {
        let snapshots = match snapshot_dir {
            Some(dir) => SnapshotFiles::open(dir),
            None => SnapshotFiles::temporary(),
        }
        .map_err(|e| snap_err(&e))?;
        let auth = match auth {
            Some(a) => a,
            None => Arc::new(
                AuthStore::open(backend.clone(), AuthConfig::default())
                    .map_err(|e| sm_read_err(&e))?,
            ),
        };
        let store =
            MvccStore::with_config(backend.clone(), config.clone()).map_err(|e| sm_read_err(&e))?;
        let meta = match store.apply_meta().map_err(|e| sm_read_err(&e))? {
            Some(bytes) => ApplyMeta::decode(&bytes)?,
            None => ApplyMeta::default(),
        };
        let applied = AppliedIndex::default();
        applied.set(meta.last_applied);
        Ok(StateMachine {
            store: Arc::new(store),
            auth,
            meta,
            snapshots: Arc::new(snapshots),
            applied,
        })
    }

    /// The index of the last entry this state machine applied, updated as it applies.
    pub fn applied_index(&self) -> AppliedIndex {
        self.applied.clone()
    }

    /// The store.
    pub fn store(&self) -> Arc<MvccStore<B>> {
        self.store.clone()
    }

    /// The auth store the auth commands apply to.
    pub fn auth(&self) -> Arc<AuthStore<B>> {
        self.auth.clone()
    }

    /// The directory the snapshot files live in.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.snapshots.dir().to_path_buf()
    }
}

/// Applies one command to `store` (or, for auth commands, to `auth`) as the entry at
/// `index`, with `record` the encoded apply record that must be stored with its effects.
/// `Err` only for failures of the store itself.
fn execute<B: Backend>(
    store: &Arc<MvccStore<B>>,
    auth: &AuthStore<B>,
    cmd: &Command,
    index: u64,
    record: Vec<u8>,
) -> Result<Applied, ApplyFailure> {
    let auth_result = |r: Result<CommandResponse, AuthError>| match r {
        Ok(r) => Ok(Applied(Ok(r))),
        Err(e) => match CommandError::from_auth(&e) {
            Some(ce) => Ok(Applied(Err(ce))),
            None => Err(ApplyFailure::Auth(e)),
        },
    };
    let result = match cmd {
        Command::Auth {
            cmd,
            user,
            auth_revision,
        } => {
            // The auth rows and the apply record go in one atomic backend write; the store's
            // own copy of the record is set only afterwards, so no other write can persist
            // this entry's position without its auth rows.
            let info = AuthInfo {
                user: user.clone(),
                revision: *auth_revision,
            };
            let mut extra = WriteBatch::new();
            extra.put(Tree::Meta, META_APPLY, record.clone());
            let r = auth
                .check_admin(&info)
                .and_then(|()| auth.apply_with_batch(cmd, extra))
                .map(|r| CommandResponse::Auth {
                    revision: r.revision,
                    changed: r.changed,
                });
            store.set_apply_meta(record);
            return auth_result(r);
        }
        Command::Authenticate {
            name,
            simple_token_prefix,
        } => {
            // Tokens live in memory only (as etcd's simple tokens): nothing to persist.
            store.set_apply_meta(record);
            let r = auth
                .assign_token(name, simple_token_prefix, index)
                .map(|token| CommandResponse::Authenticate { token });
            return auth_result(r);
        }
        Command::AuthChecked { auth_revision, cmd } => {
            if matches!(**cmd, Command::Batch(_) | Command::AuthChecked { .. }) {
                store.set_apply_meta(record);
                return Ok(Applied(Err(CommandError::InvalidArgument(
                    "a batch or guarded command inside a guarded command".to_string(),
                ))));
            }
            let status = auth.status();
            if status.enabled && status.revision > *auth_revision {
                store.set_apply_meta(record);
                return auth_result(Err(AuthError::AuthOldRevision));
            }
            return execute(store, auth, cmd, index, record);
        }
        _ => {
            store.set_apply_meta(record);
            match cmd {
                Command::Put(p) => store.kv_put(p).map(CommandResponse::Put),
                Command::DeleteRange(d) => {
                    store.kv_delete_range(d).map(CommandResponse::DeleteRange)
                }
                Command::Txn(t) => store.kv_txn(t).map(CommandResponse::Txn),
                // In force at once; the rows go on the store's compaction thread, so the
                // entries after it are not held up (etcd compacts in the background too).
                Command::Compaction(c) => store
                    .kv_compact_in_background(c)
                    .map(CommandResponse::Compaction),
                Command::LeaseGrant { id, ttl } => store
                    .lease_grant(*id, *ttl)
                    .map(CommandResponse::LeaseGrant),
                Command::LeaseRevoke { id } => store
                    .lease_revoke(*id)
                    .map(|revision| CommandResponse::LeaseRevoke { revision }),
                Command::LeaseCheckpoint { id, remaining_ttl } => store
                    .lease_checkpoint(*id, *remaining_ttl)
                    .map(|()| CommandResponse::Done),
                Command::Batch(_) => Err(MvccError::InvalidArgument(
                    "a batch inside a batch".to_string(),
                )),
                _ => Ok(CommandResponse::Done),
            }
        }
    };
    match result {
        Ok(r) => Ok(Applied(Ok(r))),
        Err(e) => match CommandError::from_mvcc(&e) {
            Some(ce) => Ok(Applied(Err(ce))),
            None => Err(ApplyFailure::Mvcc(e)),
        },
    }
}

/// A failure of the store itself while applying (the member must stop).
#[derive(Debug, thiserror::Error)]
enum ApplyFailure {
    /// Of the MVCC store.
    #[error(transparent)]
    Mvcc(MvccError),
    /// Of the auth store.
    #[error(transparent)]
    Auth(AuthError),
}

/// Shortest run of plain puts in a [`Command::Batch`] applied with one engine write.
const MIN_PUT_GROUP: usize = 2;

/// Applies `entries` in order (blocking: runs on a blocking thread).
fn apply_blocking<B: Backend>(
    store: &Arc<MvccStore<B>>,
    auth: &AuthStore<B>,
    meta: &mut ApplyMeta,
    entries: Vec<Entry>,
) -> Result<Vec<Applied>, StorageError> {
    let mut out = Vec::with_capacity(entries.len());
    // Whether the store's last write carried the final record (see the end).
    let mut carried = false;
    for entry in entries {
        let log_id = entry.log_id;
        let prev = meta.last_applied;
        meta.last_applied = Some(log_id);
        fn failed(log_id: LogId, e: &(impl std::error::Error + 'static)) -> StorageError {
            StorageIOError::apply(log_id, AnyError::new(e)).into()
        }
        let applied_err = |e: &ApplyFailure| failed(log_id, e);
        match entry.payload {
            EntryPayload::Blank => {
                carried = false;
                out.push(Applied(Ok(CommandResponse::Done)))
            }
            EntryPayload::Normal(Command::Batch(cmds)) => {
                // Each command, or run of plain puts, commits its own backend write: all but
                // the last record the batch as partially applied (see `ApplyMeta::partial`).
                let skip = match meta.partial {
                    Some((id, done)) if id == log_id => done,
                    _ => 0,
                };
                let total = cmds.len();
                let mut results = Vec::with_capacity(total);
                carried = false;
                // The record written with the effects of the commands before `done`.
                let record = |done: usize| {
                    if done == total {
                        ApplyMeta {
                            last_applied: Some(log_id),
                            last_membership: meta.last_membership.clone(),
                            partial: None,
                        }
                    } else {
                        ApplyMeta {
                            last_applied: prev,
                            last_membership: meta.last_membership.clone(),
                            partial: Some((log_id, done)),
                        }
                    }
                };
                let mut i = 0;
                while i < total {
                    if i < skip {
                        results.push(Err(CommandError::Other(
                            "applied before a restart".to_string(),
                        )));
                        i += 1;
                        continue;
                    }
                    // A run of plain puts is applied with one engine write (see
                    // `MvccStore::kv_put_group`), its record covering the whole run.
                    let run: Vec<&mvcc_core::Put> = cmds[i..]
                        .iter()
                        .map_while(|c| match c {
                            Command::Put(p) if !p.reads_key() => Some(p),
                            _ => None,
                        })
                        .collect();
                    if run.len() >= MIN_PUT_GROUP {
                        let end = i + run.len();
                        store.set_apply_meta(record(end).encode()?);
                        let before = store.current_revision();
                        let group = store
                            .kv_put_group(&run)
                            .map_err(|e| applied_err(&ApplyFailure::Mvcc(e)))?;
                        for r in group {
                            results.push(match r {
                                Ok(put) => Ok(CommandResponse::Put(put)),
                                Err(e) => Err(CommandError::from_mvcc(&e)
                                    .ok_or_else(|| applied_err(&ApplyFailure::Mvcc(e)))?),
                            });
                        }
                        carried = end == total && store.current_revision() != before;
                        i = end;
                        continue;
                    }
                    let before = store.current_revision();
                    let Applied(result) =
                        execute(store, auth, &cmds[i], log_id.index, record(i + 1).encode()?)
                            .map_err(|e| applied_err(&e))?;
                    carried = i + 1 == total && store.current_revision() != before;
                    results.push(result);
                    i += 1;
                }
                meta.partial = None;
                out.push(Applied(Ok(CommandResponse::Batch(results))));
            }
            EntryPayload::Normal(cmd) => {
                meta.partial = None;
                let record = meta.encode()?;
                let before = store.current_revision();
                out.push(
                    execute(store, auth, &cmd, log_id.index, record)
                        .map_err(|e| applied_err(&e))?,
                );
                carried = store.current_revision() != before;
            }
            EntryPayload::Membership(m) => {
                meta.partial = None;
                meta.last_membership = StoredMembership::new(Some(log_id), m);
                store.set_apply_meta(meta.encode()?);
                store.write_apply_meta().map_err(|e| failed(log_id, &e))?;
                carried = true;
                out.push(Applied(Ok(CommandResponse::Done)));
            }
        }
    }
    // The last entry may have written nothing (a blank entry, a failed compare): record the
    // position once per call, so a snapshot taken from now on names the last applied entry.
    // Not needed when the last entry created a revision: that write carried this very record
    // (its log id, the membership, nothing partial), which saves an engine write per apply.
    if let Some(last) = meta.last_applied.filter(|_| !carried) {
        store.set_apply_meta(meta.encode()?);
        store
            .write_apply_meta()
            .map_err(|e| StorageIOError::apply(last, AnyError::new(&e)).into())
            .map_err(|e: StorageError| e)?;
    }
    Ok(out)
}

impl<B: Backend> RaftStateMachine<TypeConfig> for StateMachine<B> {
    type SnapshotBuilder = SnapshotBuilder<B>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let auth = self.auth.clone();
        let mut meta = self.meta.clone();
        // In place on a multi-threaded runtime: the proposer waits for this apply, and a hand-off
        // to a blocking thread and back costs more than a small apply itself.
        let (meta, result) = crate::file_log::blocking(move || {
            let r = apply_blocking(&store, &auth, &mut meta, entries);
            (meta, r)
        })
        .await
        .map_err(|e| sm_write_err(&e))?;
        self.meta = meta;
        if result.is_ok() {
            self.applied.set(self.meta.last_applied);
        }
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let snapshots = self.snapshots.clone();
        let file = tokio::task::spawn_blocking(move || snapshots.begin_receiving())
            .await
            .map_err(|e| snap_write_err(&e))?
            .map_err(|e| snap_write_err(&e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut data = *snapshot;
        // Completes the writes still in flight in tokio's file.
        tokio::io::AsyncWriteExt::flush(&mut data)
            .await
            .map_err(|e| snap_write_err(&e))?;
        let data = data.into_std().await;
        let store = self.store.clone();
        let auth = self.auth.clone();
        let snapshots = self.snapshots.clone();
        let snap_meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            // The received file itself, or a copy of any other file (e.g. a snapshot of
            // another state machine handed over whole).
            let (temp, file) = match snapshots.take_receiving(&data) {
                Some(temp) => (temp, data),
                None => {
                    let (temp, mut copy) = snapshots
                        .create_temp("copy")
                        .map_err(|e| snap_write_err(&e))?;
                    let mut src = data;
                    src.seek(SeekFrom::Start(0))
                        .and_then(|_| std::io::copy(&mut src, &mut copy))
                        .map_err(|e| snap_write_err(&e))?;
                    (temp, copy)
                }
            };
            file.sync_all().map_err(|e| snap_write_err(&e))?;
            // First pass: the whole file is checked (checksum included) before the backend
            // is touched; a bad snapshot is refused and its file deleted (`temp`'s drop).
            let reader = file.try_clone().map_err(|e| snap_err(&e))?;
            let validated = ValidatedSnapshot::from_file(reader).map_err(|e| snap_err(&e))?;
            // Second pass: the records, from the same file.
            let backend = store.backend();
            backend
                .restore_validated(validated)
                .map_err(|e| sm_write_err(&e))?;
            backend.flush().map_err(|e| sm_write_err(&e))?;
            store.reload().map_err(|e| sm_read_err(&e))?;
            // The image carries the `auth` tree: users, roles, the enabled flag, the revision.
            auth.recover().map_err(|e| sm_read_err(&e))?;
            snapshots
                .commit(temp, &snap_meta)
                .map_err(|e| snap_write_err(&e))?;
            Ok(())
        })
        .await
        .map_err(|e| sm_write_err(&e))??;
        // The image's own record is authoritative; it equals `meta` for snapshots built here.
        let stored = match self.store.apply_meta().map_err(|e| sm_read_err(&e))? {
            Some(bytes) => ApplyMeta::decode(&bytes)?,
            None => ApplyMeta::default(),
        };
        if stored.last_applied != meta.last_log_id {
            tracing::warn!(
                image = ?stored.last_applied,
                meta = ?meta.last_log_id,
                "snapshot metadata differs from the image's apply record; using the metadata"
            );
        }
        self.meta = ApplyMeta {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            partial: stored
                .partial
                .filter(|_| stored.last_applied == meta.last_log_id),
        };
        self.applied.set(meta.last_log_id);
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || snapshots.current())
            .await
            .map_err(|e| snap_err(&e))?
            .map_err(|e| snap_err(&e))?;
        Ok(current.map(|(meta, file)| openraft::Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds snapshots of the current store (see the [module docs](self#snapshots)).
#[derive(Debug)]
pub struct SnapshotBuilder<B: Backend> {
    store: Arc<MvccStore<B>>,
    snapshots: Arc<SnapshotFiles>,
}

/// Finds the apply record inside a snapshot file (validating the whole file on the way).
fn meta_of_file(file: std::fs::File) -> Result<ApplyMeta, StorageError> {
    let validated = ValidatedSnapshot::from_file(file).map_err(|e| snap_err(&e))?;
    for entry in validated.entries().map_err(|e| snap_err(&e))? {
        let entry = entry.map_err(|e| snap_err(&e))?;
        if entry.tree == Tree::Meta && entry.key == META_APPLY {
            return ApplyMeta::decode(&entry.value);
        }
    }
    Ok(ApplyMeta::default())
}

/// Streams the store's image into a new file of `snapshots` and makes it the current one.
fn build_blocking<B: Backend>(
    store: &MvccStore<B>,
    snapshots: &SnapshotFiles,
) -> Result<(SnapshotMeta, std::fs::File, u64), StorageError> {
    let (temp, file) = snapshots
        .create_temp("build")
        .map_err(|e| snap_write_err(&e))?;
    let mut out = BufWriter::with_capacity(SNAPSHOT_WRITE_BUFFER, file);
    let bytes = store
        .backend()
        .snapshot_to(&mut out)
        .map_err(|e| snap_write_err(&e))?;
    let file = out.into_inner().map_err(|e| snap_write_err(e.error()))?;
    file.sync_all().map_err(|e| snap_write_err(&e))?;
    // Durable before the snapshot is reported: openraft may then purge the log up to it, so
    // the store on disk must hold at least what the image holds. Entries are applied while
    // the image is taken, so the flush comes after it (a flush before it left the image
    // ahead of the disk: a power cut then found the log purged past the store's apply
    // record, and the member could not restart).
    store.flush().map_err(|e| sm_write_err(&e))?;
    let meta = meta_of_file(file)?;
    let snapshot_id = match meta.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_string(),
    };
    let snap_meta = SnapshotMeta {
        last_log_id: meta.last_applied,
        last_membership: meta.last_membership,
        snapshot_id,
    };
    let file = snapshots
        .commit(temp, &snap_meta)
        .map_err(|e| snap_write_err(&e))?;
    Ok((snap_meta, file, bytes))
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<B> {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        let (meta, file, bytes) =
            tokio::task::spawn_blocking(move || build_blocking(&store, &snapshots))
                .await
                .map_err(|e| sm_write_err(&e))??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, "built snapshot");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

//! # rusd-raft
//!
//! Replication of rusd's [`MvccStore`](mvcc_core::MvccStore) with
//! [openraft](https://docs.rs/openraft/0.9) 0.9 (its stable line):
//!
//! * [`types`]: the openraft type configuration: etcd member ids (`u64`), [`Member`]s, the
//!   replicated [`Command`]s (mvcc-core's own request types, rusd-auth's `AuthCommand`s and
//!   simple-token logins) and their responses;
//! * [`file_log`]: the raft log, rusd's write-ahead log: one append-only file, one `write`
//!   and one `fdatasync` per append (group fsync); entries are read back from the file, with
//!   only an index (12 bytes per entry) and a byte-bounded cache of the newest entries in
//!   memory (not etcd's all-in-memory `MemoryStorage`); [`log_store`] is the alternative on a dedicated storage-api engine instance
//!   (one write batch and one engine flush per append), slower because of the engine's flush;
//!   why not `raft-engine` is explained there;
//! * [`state_machine`]: the store applying committed entries in buffered mode, with the last
//!   applied log id written atomically with the data (etcd's consistent index), auth changes
//!   included (applied to the `rusd_auth::AuthStore` of the same engine); snapshots are the
//!   engine-portable backend snapshot (every tree, `auth` included), so members may run
//!   different engines; snapshots are files in `<data-dir>/raft-snap`, built, sent, received
//!   and restored by streaming, so they take a few MiB of memory whatever the store size
//!   (see [`state_machine`]'s "Snapshots");
//! * [`network`]: the peer gRPC service (AppendEntries, Vote, chunked InstallSnapshot, and
//!   Forward for client requests reaching a follower);
//! * [`node`]: [`RaftNode`], the API a server uses: start, write, linearizable barrier
//!   (ReadIndex), membership, metrics, shutdown.
//!
//! The write path: a client write becomes a [`Command`], is proposed on the leader, appended
//! to the leader's log and its followers' logs (each flushed before it acknowledges), and once
//! a quorum holds it durably it is committed and applied on every member; the client gets the
//! result of the application. Nothing is observable before it is committed: reads see the
//! store, which only holds applied (committed) entries.
//!
//! # Running a cluster (the `rusd` binary, etcd's flags)
//! Three members on one machine:
//!
//! ```text
//! rusd --name m1 --data-dir m1 --listen-client-urls http://127.0.0.1:2379 \
//!      --listen-peer-urls http://127.0.0.1:2380 \
//!      --initial-cluster m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2382,m3=http://127.0.0.1:2384
//! rusd --name m2 --data-dir m2 --listen-client-urls http://127.0.0.1:2381 \
//!      --listen-peer-urls http://127.0.0.1:2382 --initial-cluster <same>
//! rusd --name m3 --data-dir m3 --listen-client-urls http://127.0.0.1:2383 \
//!      --listen-peer-urls http://127.0.0.1:2384 --initial-cluster <same>
//! ```
//!
//! Member ids are derived from the peer URLs and `--initial-cluster-token` (default
//! `etcd-cluster`), as etcd derives them; every member of a new cluster initialises it with
//! the same membership. Without cluster flags `rusd` is a one-member cluster (same data
//! directory layout: the store in `<data-dir>/member`, the raft log in
//! `<data-dir>/raft-wal` (or `raft-log` on an engine), the raft snapshots in
//! `<data-dir>/raft-snap`; a data directory written before replication is adopted).
//!
//! * **Add a member**: `etcdctl member add m4 --peer-urls=http://127.0.0.1:2386`, then start it
//!   with `--initial-cluster-state existing` and its `--listen-peer-urls`. It joins as a learner,
//!   catches up (by snapshot if the log was purged) and the leader makes it a voter once it is
//!   in sync; `--learner` keeps it a learner until `etcdctl member promote`.
//! * **Replace a dead member**: `etcdctl member remove <id>`, then add a new one as above with
//!   an empty data directory.
//! * **Back up**: `etcdctl snapshot save` on any member (a follower too) gives the portable
//!   store image (see `storage_api::snapshot`), framed with a SHA-256 as etcdctl expects (see
//!   `etcd_import::frame`); `rusd snapshot save <data dir> <file>` does the same offline.
//! * **Restore a cluster from a backup**: stop the old members; `rusd snapshot restore <file>
//!   --data-dir m1 [--backend <engine>]` (any engine; a framed or bare snapshot; the source
//!   member's raft position is dropped), start `m1` alone (no `--initial-cluster`: it adopts
//!   the store as a one-member cluster, takes a snapshot and purges its log before it serves
//!   clients), then add the other members one by one as above (`member add`, then start them
//!   with empty data directories, `--initial-cluster-state existing` and an
//!   `--initial-cluster` naming the members so far); they catch up by snapshot. As with
//!   `etcdctl snapshot restore`, every key keeps its create and mod revisions and version, the
//!   store its revision (the next write gets the one after) and its compaction, and leases
//!   stay with their keys; a lease's remaining TTL starts again from its full TTL (or its last
//!   checkpointed remaining TTL) when the new cluster elects its leader. Member ids derive
//!   from the new peer URLs and token. A crash of `m1` before its adoption snapshot is
//!   harmless: the adoption is marked by the file `adopting` in its data directory until the
//!   log is purged, and a restart adopts again. A `member add` while another member's
//!   promotion is still being committed waits for it. `rusd-server/tests/cluster_restore.rs`
//!   runs this with three processes, and once with a crash before the adoption snapshot.
//!
//! # Guarantees
//! * A write is acknowledged once its entry is durable (flushed) in the logs of a quorum and
//!   applied on the member that answers; it survives the loss of any minority of members,
//!   process kills and (with `--durability sync`, the default) power loss.
//! * Nothing is observable before it is committed: members apply only committed entries.
//! * Reads are linearizable by default (ReadIndex on the leader, also for reads served by a
//!   follower); `serializable` reads are served from the local store at once and may be stale.
//! * A minority partition cannot commit writes nor serve linearizable reads; writes and
//!   linearizable reads there fail after the request timeout with `etcdserver: request timed
//!   out` / `no leader`.
//! * Leases are expired by the leader only; the leader checkpoints remaining TTLs through the
//!   log (etcd's lease checkpointing, every 5 minutes by default), and a new leader renews
//!   every lease from its checkpointed remaining TTL (its full TTL without one).
//!   `LeaseTimeToLive` is answered from the local store, so on a follower the remaining TTL is
//!   counted from when that member applied the grant (or opened its store).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// openraft's storage traits return its `StorageError` (224 bytes); the helpers that build it
// return it too, rather than boxing it and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod file_log;
pub mod log_store;
pub mod network;
pub mod node;
mod snapshot_files;
pub mod state_machine;
pub mod types;

/// The peer service's protocol, generated from `proto/raftpb.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("rusdraftpb");
}

pub use error::{RaftError, RaftResult, WireError};
pub use network::PeerTls;
pub use node::{
    default_raft_config, InitialState, MembershipChange, RaftNode, RaftNodeConfig, RaftNodeMetrics,
    DEFAULT_LEASE_CHECKPOINT_INTERVAL, MAX_LEASE_CHECKPOINT_BATCH,
};
pub use openraft;
pub use openraft::ServerState;
pub use state_machine::ApplyMeta;
pub use types::{Applied, Command, CommandError, CommandResponse, Member, NodeId, TypeConfig};

/// `err` and its sources as one line.
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// FNV-1a, 64 bits: a stable hash for ids (not for security).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A member id computed as etcd does from what identifies a member: its peer URLs (sorted)
/// and the cluster token. Never 0.
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut parts: Vec<&[u8]> = urls.iter().map(|u| u.as_bytes()).collect();
    parts.push(token.as_bytes());
    fnv1a(&parts).max(1)
}

/// A cluster id computed as etcd does from the initial members' ids (sorted) and the cluster
/// token. Never 0.
pub fn cluster_id(member_ids: impl IntoIterator<Item = NodeId>, token: &str) -> u64 {
    let mut ids: Vec<NodeId> = member_ids.into_iter().collect();
    ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = ids.iter().map(|i| i.to_be_bytes()).collect();
    let mut parts: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    parts.push(token.as_bytes());
    fnv1a(&parts).max(1)
}

//! The `Maintenance` and `Cluster` services (the `Auth` service is in [`crate::auth`]).

use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;

use storage_api::Backend;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::config::ETCD_VERSION;
use crate::error::{error_chain, mvcc_status, rpc};
use crate::pb::etcdserverpb::*;
use crate::state::{blocking, State};

/// Bytes per snapshot chunk (etcd sends 32 KiB chunks).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The `Maintenance` service.
#[derive(Debug, Clone)]
pub struct MaintenanceService {
    state: Arc<State>,
}

impl MaintenanceService {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        MaintenanceService { state }
    }
}

/// A CRC-32 over the key-values visible at `revision` (0 = current): every key, value,
/// create/mod revision, version and lease, in key order. Returns `(hash, revision)`.
pub fn hash_kv(state: &State, revision: i64) -> Result<(u32, i64), Status> {
    let store = &state.store;
    let res = store
        .range(&[0], &[0], revision, 0, false)
        .map_err(mvcc_status)?;
    let rev = if revision > 0 { revision } else { res.revision };
    let mut h = crc32fast::Hasher::new();
    for kv in &res.kvs {
        h.update(&(kv.key.len() as u64).to_be_bytes());
        h.update(&kv.key);
        h.update(&(kv.value.len() as u64).to_be_bytes());
        h.update(&kv.value);
        for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
            h.update(&n.to_be_bytes());
        }
    }
    Ok((h.finalize(), rev))
}

fn status_response(state: &State) -> StatusResponse {
    let size = state.refresh_db_size() as i64;
    let rev = state.store.current_revision();
    let (index, applied) = state.raft_indexes();
    let errors = state
        .alarm_list()
        .into_iter()
        .map(|a| {
            let name = AlarmType::try_from(a.alarm)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| a.alarm.to_string());
            format!("memberID:{} alarm:{} ", a.member_id, name)
        })
        .collect();
    StatusResponse {
        header: state.header(rev),
        version: ETCD_VERSION.into(),
        db_size: size,
        leader: state.leader_id(),
        raft_index: index,
        raft_term: state.raft_term(),
        raft_applied_index: applied,
        errors,
        db_size_in_use: size,
        is_learner: state.is_learner(),
        storage_version: String::new(),
        db_size_quota: state
            .quota
            .map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX)),
        downgrade_info: None,
    }
}

fn alarm(state: &State, r: &AlarmRequest) -> Result<AlarmResponse, Status> {
    use alarm_request::AlarmAction;
    let action = AlarmAction::try_from(r.action).map_err(|_| {
        Status::invalid_argument(format!("rusd: unknown alarm action {}", r.action))
    })?;
    let mut alarms = Vec::new();
    match action {
        AlarmAction::Get => {
            alarms = state
                .alarm_list()
                .into_iter()
                .filter(|a| r.alarm == AlarmType::None as i32 || a.alarm == r.alarm)
                .collect();
        }
        AlarmAction::Activate => {
            if r.alarm != AlarmType::None as i32
                && state.alarms.lock().insert((r.member_id, r.alarm))
            {
                alarms.push(AlarmMember {
                    member_id: r.member_id,
                    alarm: r.alarm,
                });
            }
        }
        AlarmAction::Deactivate => {
            if state.alarms.lock().remove(&(r.member_id, r.alarm)) {
                alarms.push(AlarmMember {
                    member_id: r.member_id,
                    alarm: r.alarm,
                });
            }
        }
    }
    Ok(AlarmResponse {
        header: state.header_now(),
        alarms,
    })
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// The framing of a snapshot stream (`snapshot | zeros | length | SHA-256`, so that etcdctl's
/// `snapshot save` accepts it); it lives in `etcd_import`, whose `rusd snapshot restore` and
/// `status` read such a file as well as a bare portable snapshot.
pub use etcd_import::frame;

fn stream_snapshot(state: &State, tx: &mpsc::Sender<Result<SnapshotResponse, Status>>) {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let io_err = |what: &str, e: std::io::Error| {
        Status::new(Code::Internal, format!("rusd: snapshot: {what}: {e}"))
    };
    let result = (|| -> Result<(), Status> {
        let mut file = tempfile::tempfile().map_err(|e| io_err("creating a temporary file", e))?;
        let len = state
            .store
            .backend()
            .snapshot_to(&mut file)
            .map_err(|e| Status::new(Code::Internal, error_chain(&e)))?;
        file.write_all(&frame::padding(len))
            .map_err(|e| io_err("writing", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("rewinding", e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| io_err("reading", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.write_all(&hasher.finalize())
            .map_err(|e| io_err("writing", e))?;
        let total = file
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("measuring", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("rewinding", e))?;
        let header = state.header_now();
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| io_err("reading", e))?;
            if n == 0 {
                break;
            }
            sent += n as u64;
            let resp = SnapshotResponse {
                header,
                remaining_bytes: total.saturating_sub(sent),
                blob: buf[..n].to_vec(),
                version: ETCD_VERSION.into(),
            };
            if tx.blocking_send(Ok(resp)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

#[tonic::async_trait]
impl maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.state
            .authorize_alarm(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "Alarm"))?;
        let res = alarm(&self.state, request.get_ref());
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "Alarm", &res);
        res.map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.state.clone();
        let res = blocking(move || Ok(status_response(&st))).await;
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "Status", &res);
        res.map(Response::new)
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.state
            .authorize_maintenance(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "Defragment"))?;
        let st = self.state.clone();
        let res = blocking(move || {
            st.store
                .backend()
                .defragment()
                .map_err(|e| Status::new(Code::Internal, error_chain(&e)))?;
            st.refresh_db_size();
            Ok(DefragmentResponse {
                header: st.header_now(),
            })
        })
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "Defragment", &res);
        res.map(Response::new)
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.state
            .authorize_maintenance(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "Hash"))?;
        let st = self.state.clone();
        let res = blocking(move || {
            let (hash, rev) = hash_kv(&st, 0)?;
            Ok(HashResponse {
                header: st.header(rev),
                hash,
            })
        })
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "Hash", &res);
        res.map(Response::new)
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.state
            .authorize_maintenance(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "HashKV"))?;
        let st = self.state.clone();
        let revision = request.into_inner().revision;
        let res = blocking(move || {
            let (hash, rev) = hash_kv(&st, revision)?;
            Ok(HashKvResponse {
                header: st.header_now(),
                hash,
                compact_revision: st.store.compact_revision().max(0),
                hash_revision: rev,
            })
        })
        .await;
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "HashKV", &res);
        res.map(Response::new)
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.state
            .authorize_maintenance(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "Snapshot"))?;
        let (tx, rx) = mpsc::channel(16);
        let st = self.state.clone();
        tokio::task::spawn_blocking(move || stream_snapshot(&st, &tx));
        let res: Result<(), Status> = Ok(());
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "Snapshot", &res);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.state
            .authorize_admin(&request)
            .map_err(self.state.refused("etcdserverpb.Maintenance", "MoveLeader"))?;
        let target = request.get_ref().target_id;
        let res = match &self.state.raft {
            // etcd: only the leader moves its leadership (`ErrGRPCNotLeader` elsewhere), to a
            // voter (`ErrGRPCBadLeaderTransferee`), and answers once the transferee leads.
            Some(raft) => raft
                .move_leader(target)
                .await
                .map_err(|e| self.state.raft_status(e)),
            // A server without raft is its own leader: only itself is a transferee.
            None if target == self.state.member_id => Ok(()),
            None => Err(crate::state::raft_errors::bad_leader_transferee()),
        }
        .map(|()| MoveLeaderResponse {
            header: self.state.header_now(),
        });
        self.state
            .metrics
            .observe("etcdserverpb.Maintenance", "MoveLeader", &res);
        res.map(Response::new)
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(rpc::unsupported("downgrade"))
    }
}

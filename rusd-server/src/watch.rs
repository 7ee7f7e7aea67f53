//! The `Watch` service.
//!
//! Each gRPC watch stream gets one thread that owns the stream's watchers
//! ([`mvcc_core::Watcher`]) and waits on all of their channels and on a command channel
//! (create, cancel, progress) at once, so responses of one stream keep a single order: a
//! watcher's `created` response precedes its events, a cancel response follows its last
//! event, and a progress response follows every event at or below its revision. Events wait in
//! the watcher's unbounded channel while the client is slow; none is dropped or repeated.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::{self, Receiver, Select, Sender};
use mvcc_core::{EventKind, MvccError, Watcher};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::pb::mvccpb;
use crate::state::{to_pb_kv, State};

/// The `Watch` service.
#[derive(Debug, Clone)]
pub struct WatchService {
    state: Arc<State>,
}

impl WatchService {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        WatchService { state }
    }
}

enum Cmd {
    Create(WatchCreateRequest),
    /// A create request refused by the auth check (etcd `isWatchPermitted`).
    Denied(Status),
    Cancel(i64),
    Progress,
}

struct StreamWatcher {
    id: i64,
    watcher: Watcher,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    sent_since_tick: bool,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

struct StreamLoop {
    state: Arc<State>,
    out: Out,
    watchers: Vec<StreamWatcher>,
    next_id: i64,
}

enum Wake {
    Cmd(Cmd),
    CmdClosed,
    Event(usize, Option<mvcc_core::WatchResponse>),
    Timeout,
}

impl StreamLoop {
    fn send(&self, resp: WatchResponse) -> bool {
        self.out.blocking_send(Ok(resp)).is_ok()
    }

    fn run(mut self, cmds: Receiver<Cmd>) {
        let interval = self.state.progress_notify_interval;
        let mut next_tick = Instant::now() + interval;
        loop {
            let wake = {
                let mut sel = Select::new();
                sel.recv(&cmds);
                for w in &self.watchers {
                    sel.recv(w.watcher.receiver());
                }
                let timeout = next_tick.saturating_duration_since(Instant::now());
                match sel.select_timeout(timeout) {
                    Ok(op) if op.index() == 0 => match op.recv(&cmds) {
                        Ok(c) => Wake::Cmd(c),
                        Err(_) => Wake::CmdClosed,
                    },
                    Ok(op) => {
                        let i = op.index() - 1;
                        Wake::Event(i, op.recv(self.watchers[i].watcher.receiver()).ok())
                    }
                    Err(_) => Wake::Timeout,
                }
            };
            let alive = match wake {
                Wake::CmdClosed => false,
                Wake::Cmd(Cmd::Create(c)) => self.create(c),
                Wake::Cmd(Cmd::Denied(s)) => self.send(crate::auth::watch_denied(&self.state, &s)),
                Wake::Cmd(Cmd::Cancel(id)) => self.cancel(id),
                Wake::Cmd(Cmd::Progress) => self.progress(None),
                Wake::Event(i, Some(resp)) => self.deliver(i, resp),
                Wake::Event(i, None) => {
                    self.remove(i);
                    true
                }
                Wake::Timeout => {
                    next_tick = Instant::now() + interval;
                    let due: Vec<i64> = self
                        .watchers
                        .iter()
                        .filter(|w| w.progress_notify && !w.sent_since_tick)
                        .map(|w| w.id)
                        .collect();
                    for w in &mut self.watchers {
                        w.sent_since_tick = false;
                    }
                    due.is_empty() || self.progress(Some(due))
                }
            };
            if !alive {
                break;
            }
        }
        let n = self.watchers.len() as u64;
        self.state.metrics.watchers.fetch_sub(n, Ordering::Relaxed);
    }

    fn remove(&mut self, i: usize) {
        let w = self.watchers.remove(i);
        w.watcher.cancel();
        self.state.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    fn create(&mut self, c: WatchCreateRequest) -> bool {
        let state = self.state.clone();
        let current = state.store.current_revision();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.iter().any(|w| w.id == self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let fail = |reason: String| WatchResponse {
            header: state.header(current),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        if self.watchers.iter().any(|w| w.id == id) {
            return self.send(fail(
                "mvcc: duplicate watch ID provided on the WatchStream".into(),
            ));
        }
        if c.start_revision < 0 {
            return self.send(fail(MvccError::Compacted.to_string()));
        }
        let watcher = match state.store.watch(&c.key, &c.range_end, c.start_revision) {
            Ok(w) => w,
            Err(e) => return self.send(fail(e.to_string())),
        };
        let created = WatchResponse {
            header: state.header(current),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        };
        if !self.send(created) {
            return false;
        }
        state.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        self.watchers.push(StreamWatcher {
            id,
            watcher,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            sent_since_tick: false,
        });
        true
    }

    fn cancel(&mut self, id: i64) -> bool {
        let Some(i) = self.watchers.iter().position(|w| w.id == id) else {
            return true;
        };
        self.remove(i);
        self.send(WatchResponse {
            header: self.state.header_now(),
            watch_id: id,
            canceled: true,
            ..WatchResponse::default()
        })
    }

    /// Sends one store response to watcher `i`.
    fn deliver(&mut self, i: usize, resp: mvcc_core::WatchResponse) -> bool {
        let state = self.state.clone();
        let w = &mut self.watchers[i];
        if resp.canceled {
            let out = WatchResponse {
                header: state.header(resp.revision),
                watch_id: w.id,
                canceled: true,
                compact_revision: resp.compact_revision,
                ..WatchResponse::default()
            };
            self.remove(i);
            return self.send(out);
        }
        let mut events = Vec::with_capacity(resp.events.len());
        for ev in resp.events {
            let is_put = ev.kind == EventKind::Put;
            if (is_put && w.no_put) || (!is_put && w.no_delete) {
                continue;
            }
            let prev_kv = if w.prev_kv && !(is_put && ev.kv.version == 1) {
                state
                    .store
                    .range(&ev.kv.key, &[], ev.kv.mod_revision - 1, 0, false)
                    .ok()
                    .and_then(|r| r.kvs.into_iter().next())
                    .map(to_pb_kv)
            } else {
                None
            };
            events.push(mvccpb::Event {
                r#type: if is_put {
                    mvccpb::event::EventType::Put as i32
                } else {
                    mvccpb::event::EventType::Delete as i32
                },
                kv: Some(to_pb_kv(ev.kv)),
                prev_kv,
            });
        }
        if events.is_empty() {
            return true;
        }
        w.sent_since_tick = true;
        let out = WatchResponse {
            header: state.header(resp.revision),
            watch_id: w.id,
            events,
            ..WatchResponse::default()
        };
        self.send(out)
    }

    /// Sends a progress notification at the current revision, after every pending event at or
    /// below it: to every watcher in `ids`, or one stream-wide response (watch id -1, etcd's
    /// answer to a progress request) when `ids` is `None`.
    fn progress(&mut self, ids: Option<Vec<i64>>) -> bool {
        let rev = self.state.store.current_revision();
        if let Err(e) = self.state.write_barrier() {
            tracing::warn!(error = %e, "watch progress: write barrier failed");
        }
        // Drain what is already queued (every event of a revision <= rev is).
        let mut i = 0;
        while i < self.watchers.len() {
            let mut removed = false;
            while let Some(resp) = self.watchers[i].watcher.try_recv() {
                let canceled = resp.canceled;
                if !self.deliver(i, resp) {
                    return false;
                }
                if canceled {
                    removed = true;
                    break;
                }
            }
            if !removed {
                i += 1;
            }
        }
        match ids {
            None => self.send(WatchResponse {
                header: self.state.header(rev),
                watch_id: -1,
                ..WatchResponse::default()
            }),
            Some(ids) => {
                for id in ids {
                    if self.watchers.iter().any(|w| w.id == id)
                        && !self.send(WatchResponse {
                            header: self.state.header(rev),
                            watch_id: id,
                            ..WatchResponse::default()
                        })
                    {
                        return false;
                    }
                }
                true
            }
        }
    }
}

fn spawn_stream_loop(state: Arc<State>, out: Out) -> std::io::Result<Sender<Cmd>> {
    let (tx, rx) = channel::unbounded();
    let lp = StreamLoop {
        state,
        out,
        watchers: Vec::new(),
        next_id: 0,
    };
    std::thread::Builder::new()
        .name("rusd-watch".into())
        .spawn(move || lp.run(rx))?;
    Ok(tx)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// Responses buffered per watch stream before the stream's thread waits for the client.
const STREAM_BUFFER: usize = 256;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let creds = crate::auth::Credentials::of(&request);
        let mut input = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let state = self.state.clone();
        let cmds = spawn_stream_loop(state.clone(), out_tx)
            .map_err(|e| Status::internal(format!("rusd: cannot start watch stream: {e}")))?;
        let mut shutdown = state.shutdown.clone();
        state.metrics.watch_streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = input.next() => n,
                    _ = shutdown.changed() => None,
                };
                let cmd = match next {
                    Some(Ok(WatchRequest {
                        request_union: Some(u),
                    })) => match u {
                        RequestUnion::CreateRequest(mut c) => {
                            if c.key.is_empty() {
                                c.key = vec![0];
                            }
                            match state.authorize_watch(&creds, &c.key, &c.range_end) {
                                Ok(()) => Cmd::Create(c),
                                Err(refusal) => Cmd::Denied(refusal),
                            }
                        }
                        RequestUnion::CancelRequest(c) => Cmd::Cancel(c.watch_id),
                        RequestUnion::ProgressRequest(_) => Cmd::Progress,
                    },
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream failed");
                        break;
                    }
                    None => break,
                };
                if cmds.send(cmd).is_err() {
                    break;
                }
            }
            // Dropping `cmds` ends the stream's thread, which cancels its watchers.
            drop(cmds);
            state.metrics.watch_streams.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

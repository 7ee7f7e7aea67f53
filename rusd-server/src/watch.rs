//! The `Watch` service.
//!
//! Each gRPC watch stream is one async task that owns a [`mvcc_core::WatchStream`]: the
//! stream's watchers share one bounded queue ([`STREAM_QUEUE`] responses, as etcd's per-stream
//! channel), fed by the writers without ever blocking them. A watcher whose events do not fit
//! (a slow client, a watch from an old revision) is *unsynced*: its events wait in storage and
//! the task reads them back ([`mvcc_core::WatchStream::catch_up`], on the blocking pool) as
//! the client drains the queue, so a client that stops reading costs the server at most the
//! queue plus the HTTP/2 window, whatever the write rate or the history length, and no OS
//! thread per stream.
//!
//! Responses of one stream keep a single order: a watcher's `created` response precedes its
//! events, a cancel response follows its last event, and a progress response follows every
//! event at or below its revision (it travels through the same queue).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mvcc_core::{EventKind, MvccError};
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

/// Responses queued per watch stream inside the store before its watchers fall back to
/// reading their events from storage (etcd's `chanBufLen`).
pub const STREAM_QUEUE: usize = 128;

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
    /// The id the client knows.
    id: i64,
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
    stream: Arc<mvcc_core::WatchStream>,
    /// By store watcher id.
    watchers: HashMap<i64, StreamWatcher>,
    next_id: i64,
}

impl StreamLoop {
    async fn send(&self, resp: WatchResponse) -> bool {
        self.out.send(Ok(resp)).await.is_ok()
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let interval = self.state.progress_notify_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            if self.stream.needs_catch_up() {
                let stream = self.stream.clone();
                match tokio::task::spawn_blocking(move || stream.catch_up()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "watch catch-up failed; closing the stream");
                        let _ = self.out.send(Err(crate::error::mvcc_status(e))).await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch catch-up task failed");
                        break;
                    }
                }
            }
            let alive = tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    None => false,
                    Some(Cmd::Create(c)) => self.create(c).await,
                    Some(Cmd::Denied(st)) => {
                        self.send(crate::auth::watch_denied(&self.state, &st)).await
                    }
                    Some(Cmd::Cancel(id)) => self.cancel(id).await,
                    Some(Cmd::Progress) => {
                        self.stream.request_progress();
                        true
                    }
                },
                resp = self.stream.recv_async() => match resp {
                    Some(resp) => self.deliver(resp).await,
                    None => false,
                },
                _ = tick.tick() => {
                    for (store_id, w) in self.watchers.iter_mut() {
                        if w.progress_notify && !w.sent_since_tick {
                            self.stream.progress(*store_id);
                        }
                        w.sent_since_tick = false;
                    }
                    true
                }
            };
            if !alive {
                break;
            }
        }
        let n = self.watchers.len() as u64;
        self.state.metrics.watchers.fetch_sub(n, Ordering::Relaxed);
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let state = self.state.clone();
        let current = state.store.current_revision();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.values().any(|w| w.id == self.next_id) {
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
        if self.watchers.values().any(|w| w.id == id) {
            return self
                .send(fail(
                    "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ))
                .await;
        }
        if self.watchers.len() >= self.state.max_watchers_per_stream {
            return self
                .send(fail(format!(
                    "rusd: too many watchers on this stream (--max-watchers-per-stream {})",
                    self.state.max_watchers_per_stream
                )))
                .await;
        }
        if c.start_revision < 0 {
            return self.send(fail(MvccError::Compacted.to_string())).await;
        }
        let store_id = match self.stream.watch(&c.key, &c.range_end, c.start_revision) {
            Ok(w) => w,
            Err(e) => return self.send(fail(e.to_string())).await,
        };
        state.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        self.watchers.insert(
            store_id,
            StreamWatcher {
                id,
                prev_kv: c.prev_kv,
                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                progress_notify: c.progress_notify,
                sent_since_tick: false,
            },
        );
        let created = WatchResponse {
            header: state.header(current),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        };
        self.send(created).await
    }

    fn remove(&mut self, store_id: i64) -> Option<StreamWatcher> {
        let w = self.watchers.remove(&store_id)?;
        self.stream.cancel(store_id);
        self.stream.forget(store_id);
        self.state.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
        Some(w)
    }

    async fn cancel(&mut self, id: i64) -> bool {
        let Some(store_id) = self
            .watchers
            .iter()
            .find(|(_, w)| w.id == id)
            .map(|(s, _)| *s)
        else {
            return true;
        };
        self.remove(store_id);
        self.send(WatchResponse {
            header: self.state.header_now(),
            watch_id: id,
            canceled: true,
            ..WatchResponse::default()
        })
        .await
    }

    /// Sends one store response.
    async fn deliver(&mut self, resp: mvcc_core::WatchResponse) -> bool {
        let state = self.state.clone();
        if resp.watch_id == -1 {
            // Stream-wide progress: every event at or below `revision` was sent before it.
            return self
                .send(WatchResponse {
                    header: state.header(resp.revision),
                    watch_id: -1,
                    ..WatchResponse::default()
                })
                .await;
        }
        let store_id = resp.watch_id;
        let Some(w) = self.watchers.get_mut(&store_id) else {
            // Cancelled by the client meanwhile: etcd drops what was still queued.
            return true;
        };
        let id = w.id;
        if resp.canceled {
            self.remove(store_id);
            self.stream.forget(store_id);
            return self
                .send(WatchResponse {
                    header: state.header(resp.revision),
                    watch_id: id,
                    canceled: true,
                    compact_revision: resp.compact_revision,
                    ..WatchResponse::default()
                })
                .await;
        }
        if resp.is_progress() {
            return self
                .send(WatchResponse {
                    header: state.header(resp.revision),
                    watch_id: id,
                    ..WatchResponse::default()
                })
                .await;
        }
        let (prev_kv, no_put, no_delete) = (w.prev_kv, w.no_put, w.no_delete);
        let revision = resp.revision;
        let convert = move |st: &State| -> Vec<mvccpb::Event> {
            let mut events = Vec::with_capacity(resp.events.len());
            for ev in resp.events {
                let is_put = ev.kind == EventKind::Put;
                if (is_put && no_put) || (!is_put && no_delete) {
                    continue;
                }
                let prev = if prev_kv && !(is_put && ev.kv.version == 1) {
                    st.store
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
                    prev_kv: prev,
                });
            }
            events
        };
        let events = if prev_kv {
            // Reading the previous values is storage work: off the async workers.
            let st = state.clone();
            match tokio::task::spawn_blocking(move || convert(&st)).await {
                Ok(e) => e,
                Err(_) => return false,
            }
        } else {
            convert(&state)
        };
        if events.is_empty() {
            return true;
        }
        if let Some(w) = self.watchers.get_mut(&store_id) {
            w.sent_since_tick = true;
        }
        self.send(WatchResponse {
            header: state.header(revision),
            watch_id: id,
            events,
            ..WatchResponse::default()
        })
        .await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// Responses buffered per watch stream between its task and the transport.
const STREAM_BUFFER: usize = 16;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let creds = crate::auth::Credentials::of(&request);
        let out = serve(self.state.clone(), creds, request.into_inner());
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// Serves one watch stream: the requests of `input` (creates, checked against `creds`;
/// cancels; progress requests) drive one stream task whose responses come out of the returned
/// receiver. Shared by the gRPC service and the JSON gateway's `/v3/watch`.
///
/// As etcd's `serverWatchStream`, the end of `input` (the client closed its sending side, or
/// an HTTP request body ended) does not end the stream: its watchers keep sending until the
/// receiver is dropped or the server shuts down. An error from `input` ends the stream.
pub fn serve<S>(
    state: Arc<State>,
    creds: crate::auth::Credentials,
    mut input: S,
) -> mpsc::Receiver<Result<WatchResponse, Status>>
where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
    let (cmds, cmd_rx) = mpsc::channel::<Cmd>(64);
    let probe = out_tx.clone();
    let lp = StreamLoop {
        state: state.clone(),
        out: out_tx,
        stream: Arc::new(state.store.watch_stream(STREAM_QUEUE)),
        watchers: HashMap::new(),
        next_id: 0,
    };
    tokio::spawn(lp.run(cmd_rx));
    let mut shutdown = state.shutdown.clone();
    state.metrics.watch_streams.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = input.next() => n,
                _ = shutdown.changed() => break,
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
                    let _ = probe.send(Err(e)).await;
                    break;
                }
                None => {
                    // The client will send nothing more; its watchers stay (etcd `recvLoop`
                    // returns nil on EOF and the send loop goes on).
                    tokio::select! {
                        _ = probe.closed() => {}
                        _ = shutdown.changed() => {}
                    }
                    break;
                }
            };
            if cmds.send(cmd).await.is_err() {
                break;
            }
        }
        // Dropping `cmds` ends the stream's task, which cancels its watchers.
        drop(cmds);
        drop(probe);
        state.metrics.watch_streams.fetch_sub(1, Ordering::Relaxed);
    });
    out_rx
}

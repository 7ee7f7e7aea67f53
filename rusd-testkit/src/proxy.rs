//! A loopback TCP proxy for one peer link, which a test can cut, heal and delay.
//!
//! To partition a cluster on loopback, give each member, for each other member, the
//! address of a proxy in front of that member's peer port instead of the port itself: one
//! [`Proxy`] per directed link (A→B, B→A, ...). Cutting both directions between a member
//! and the rest isolates it; healing restores the link.
//!
//! ```no_run
//! use rusd_testkit::proxy::Proxy;
//! let peer_port_of_b = "127.0.0.1:2380".parse().unwrap();
//! let a_to_b = Proxy::start(peer_port_of_b).unwrap();
//! // configure member A to reach B at a_to_b.addr() ...
//! a_to_b.cut().unwrap(); // existing connections closed, new ones black-holed
//! a_to_b.heal();         // new connections forwarded again
//! ```
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it works
//! the same from synchronous tests and from inside `#[tokio::test]`, and it is stopped
//! (every connection closed) when the [`Proxy`] is dropped.
//!
//! A cut closes every forwarded connection (both sockets, with a FIN) and treats new
//! connections according to its [`CutMode`]: [`CutMode::BlackHole`] (the default of
//! [`Proxy::cut`]) accepts them and then neither reads nor forwards anything, as a
//! partitioned network would (the client's writes fill the socket buffers, its reads wait
//! until its own timeout); [`CutMode::Refuse`] accepts and closes them at once, as a peer
//! that is down. A connection black-holed during a cut is closed by [`Proxy::heal`]: it
//! never reached the target.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// What a cut does to new connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutMode {
    /// Accept and hold them without reading or forwarding anything (a network partition).
    #[default]
    BlackHole,
    /// Accept and close them at once (a peer that is down).
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    cut: Option<CutMode>,
    /// Incremented by every cut: forwarded connections of an older epoch close.
    epoch: u64,
    delay: Duration,
    shutdown: bool,
}

struct Shared {
    control: watch::Sender<Control>,
    forwarded: AtomicUsize,
    black_holed: AtomicUsize,
    accepted: AtomicU64,
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("control", &*self.shared.control.borrow())
            .finish()
    }
}

/// How long [`Proxy::cut`] waits for the forwarded connections to close.
const CUT_WAIT: Duration = Duration::from_secs(5);

impl Proxy {
    /// Starts a proxy to `target` on a free port of 127.0.0.1.
    pub fn start(target: SocketAddr) -> Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target)
    }

    /// Starts a proxy to `target` listening on `listen` (port 0: a free port).
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Result<Self> {
        let listener =
            StdListener::bind(listen).map_err(|e| Error::io(format!("binding {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the proxy's runtime", e))?;
        let (control, _) = watch::channel(Control {
            cut: None,
            epoch: 0,
            delay: Duration::ZERO,
            shutdown: false,
        });
        let shared = Arc::new(Shared {
            control,
            forwarded: AtomicUsize::new(0),
            black_holed: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = TcpListener::from_std(listener) {
                        accept_loop(listener, target, task_shared).await;
                    }
                });
                // Dropping the runtime cancels every connection task, closing its sockets.
            })
            .map_err(|e| Error::io("spawning the proxy thread", e))?;
        Ok(Proxy {
            addr,
            target,
            shared,
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Cuts the link, black-holing new connections; see [`Proxy::cut_with`].
    pub fn cut(&self) -> Result<()> {
        self.cut_with(CutMode::BlackHole)
    }

    /// Cuts the link: closes every forwarded connection and handles new ones by `mode`.
    /// Returns once the forwarded connections are closed; fails with [`Error::Timeout`] if
    /// that takes more than 5 s (the proxy thread is stuck). Blocks the calling thread
    /// meanwhile (milliseconds), also inside an async runtime.
    pub fn cut_with(&self, mode: CutMode) -> Result<()> {
        self.shared.control.send_modify(|c| {
            c.cut = Some(mode);
            c.epoch += 1;
        });
        let deadline = Instant::now() + CUT_WAIT;
        while self.shared.forwarded.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("proxy {} to close its connections", self.addr),
                    after: CUT_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Restores the link: new connections are forwarded again; connections black-holed
    /// during the cut are closed.
    pub fn heal(&self) {
        self.shared.control.send_modify(|c| c.cut = None);
    }

    /// Whether the link is cut, and how.
    pub fn is_cut(&self) -> Option<CutMode> {
        self.shared.control.borrow().cut
    }

    /// Delays every chunk of bytes forwarded, in either direction, by `delay` (zero: no
    /// delay). Chunks of one direction stay in order, so the delay also limits throughput
    /// to one read buffer (16 KiB) per `delay`. Applies to existing connections too.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.control.send_modify(|c| c.delay = delay);
    }

    /// The number of connections currently forwarded.
    pub fn forwarded_connections(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// The number of connections currently held by a black-hole cut.
    pub fn black_holed_connections(&self) -> usize {
        self.shared.black_holed.load(Ordering::SeqCst)
    }

    /// The number of connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.control.send_modify(|c| c.shutdown = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut control = shared.control.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = control.wait_for(|c| c.shutdown) => {
                let _ = changed;
                return;
            }
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors or similar: back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Counted before reading the control, so that a cut that does not see this
        // connection is seen by it (its epoch is then stale and it closes at once).
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        let now = *shared.control.borrow();
        if now.cut.is_some() {
            shared.forwarded.fetch_sub(1, Ordering::SeqCst);
        }
        match now.cut {
            Some(CutMode::Refuse) => drop(client),
            Some(CutMode::BlackHole) => {
                shared.black_holed.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut control = shared.control.subscribe();
                    let _ = control.wait_for(|c| c.cut.is_none() || c.shutdown).await;
                    drop(client);
                    shared.black_holed.fetch_sub(1, Ordering::SeqCst);
                });
            }
            None => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let control = shared.control.subscribe();
                    forward(client, target, now.epoch, control).await;
                    shared.forwarded.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

/// Forwards one connection until either side closes or errs, or the link is cut.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    epoch: u64,
    mut control: watch::Receiver<Control>,
) {
    let cut_watch = control.clone();
    let work = async move {
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let _ = tokio::try_join!(
            pump(client_read, server_write, cut_watch.clone()),
            pump(server_read, client_write, cut_watch),
        );
    };
    tokio::select! {
        () = work => {}
        _ = control.wait_for(|c| c.epoch != epoch || c.shutdown) => {}
    }
}

/// Copies one direction, delaying each chunk by the current delay; half-closes the writer
/// at end of stream.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    control: watch::Receiver<Control>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let delay = control.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

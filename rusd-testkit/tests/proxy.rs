//! The loopback proxy against a std echo server: exact bytes, cut, heal, refuse, delay.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusd_testkit::proxy::{CutMode, Proxy};

/// An echo server on a free port; counts the connections it accepted.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("read");
    got
}

/// Reads until the peer closes: true for end of stream or reset, false if data arrived.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    }
}

/// True if nothing arrives within `wait` (the read times out).
fn silent_for(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        Ok(n) => {
            eprintln!("{n} bytes arrived");
            false
        }
    }
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forwards_exact_bytes_both_ways_and_half_close() {
    let (echo, accepted) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    assert_eq!(proxy.target(), echo);
    assert_ne!(proxy.addr().port(), echo.port());
    let mut s = connect(proxy.addr());
    assert_eq!(roundtrip(&mut s, b"hello\n"), b"hello\n".to_vec());
    // A larger payload than the proxy's buffer, every byte value.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let big = big.clone();
        std::thread::spawn(move || {
            w.write_all(&big).expect("write");
            w.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to end");
    writer.join().expect("writer");
    assert_eq!(got.len(), big.len());
    assert!(got == big, "bytes differ");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.accepted_connections(), 1);
}

#[test]
fn cut_closes_connections_and_black_holes_new_ones_until_healed() {
    let (echo, accepted) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    let mut before = connect(proxy.addr());
    assert_eq!(roundtrip(&mut before, b"ping"), b"ping".to_vec());
    assert_eq!(proxy.forwarded_connections(), 1);

    proxy.cut().expect("cut");
    assert_eq!(proxy.is_cut(), Some(CutMode::BlackHole));
    assert_eq!(proxy.forwarded_connections(), 0);
    assert!(
        closed_by_peer(&mut before),
        "existing connection not closed"
    );

    // A new connection is accepted by the kernel but nothing reaches the target.
    let mut during = connect(proxy.addr());
    during.write_all(b"lost").expect("write");
    assert!(silent_for(&mut during, Duration::from_millis(300)));
    eventually("the connection to be black-holed", || {
        proxy.black_holed_connections() == 1
    });
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    proxy.heal();
    assert_eq!(proxy.is_cut(), None);
    assert!(
        closed_by_peer(&mut during),
        "black-holed connection not closed by heal"
    );
    eventually("the black hole to empty", || {
        proxy.black_holed_connections() == 0
    });
    let mut after = connect(proxy.addr());
    assert_eq!(roundtrip(&mut after, b"pong"), b"pong".to_vec());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.accepted_connections(), 3);
}

#[test]
fn refuse_mode_closes_new_connections_at_once() {
    let (echo, accepted) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    proxy.cut_with(CutMode::Refuse).expect("cut");
    let mut s = connect(proxy.addr());
    assert!(closed_by_peer(&mut s));
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    proxy.heal();
    let mut s = connect(proxy.addr());
    assert_eq!(roundtrip(&mut s, b"back"), b"back".to_vec());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn delay_holds_bytes_back_in_each_direction() {
    let (echo, _) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    let mut s = connect(proxy.addr());
    proxy.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(roundtrip(&mut s, b"slow"), b"slow".to_vec());
    // A lower bound only: 150 ms on the way in and 150 ms on the way back.
    assert!(start.elapsed() >= Duration::from_millis(300));
    proxy.set_delay(Duration::ZERO);
    assert_eq!(roundtrip(&mut s, b"fast"), b"fast".to_vec());
}

#[test]
fn start_on_a_given_port_and_drop_closes_everything() {
    let (echo, _) = echo_server();
    let port = rusd_testkit::process::free_port().expect("port");
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let proxy = Proxy::start_on(listen, echo).expect("proxy");
    assert_eq!(proxy.addr(), listen);
    let mut s = connect(listen);
    assert_eq!(roundtrip(&mut s, b"x"), b"x".to_vec());
    drop(proxy);
    assert!(closed_by_peer(&mut s));
    assert!(TcpStream::connect(listen).is_err(), "listener still open");
}

#[tokio::test]
async fn usable_from_inside_a_tokio_runtime() {
    let (echo, _) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"async").await.expect("write");
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"async");
    proxy.cut().expect("cut");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(proxy);
}

#[test]
fn cut_closes_every_one_of_many_connections() {
    let (echo, accepted) = echo_server();
    let proxy = Proxy::start(echo).expect("proxy");
    let mut conns: Vec<TcpStream> = (0..10).map(|_| connect(proxy.addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = format!("conn {i}");
        assert_eq!(roundtrip(c, msg.as_bytes()), msg.into_bytes());
    }
    assert_eq!(proxy.forwarded_connections(), 10);
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    proxy.cut().expect("cut");
    assert_eq!(proxy.forwarded_connections(), 0);
    for c in &mut conns {
        assert!(closed_by_peer(c));
    }
    proxy.heal();
    let mut again = connect(proxy.addr());
    assert_eq!(roundtrip(&mut again, b"again"), b"again".to_vec());
    assert_eq!(accepted.load(Ordering::SeqCst), 11);
}

//! etcd's per-connection stream limit (`--max-concurrent-streams`, announced in the HTTP/2
//! SETTINGS) and rusd's watchers-per-stream limit (`--max-watchers-per-stream`): the excess
//! create is answered created and canceled, with the limit in the reason; the stream and its
//! other watchers go on.

mod common;

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use storage_api::BackendKind;

#[tokio::test]
async fn the_stream_limit_is_announced_in_the_http2_settings() {
    for (limit, expected) in [(Some(2), Some(2)), (None, Some(u32::MAX))] {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(BackendKind::Memory, dir.path(), |c| match limit {
            Some(n) => c.with_max_concurrent_streams(n),
            None => c,
        })
        .await;
        let settings = server_settings(server.client_addrs()[0]).await;
        // SETTINGS_MAX_CONCURRENT_STREAMS is parameter 0x3.
        let announced = settings.iter().find(|(id, _)| *id == 3).map(|(_, v)| *v);
        assert_eq!(announced, expected, "{settings:?}");
        server.shutdown().await.unwrap();
    }
}

/// The parameters of the server's first SETTINGS frame, after the client preface and an
/// empty SETTINGS frame of the client.
async fn server_settings(addr: std::net::SocketAddr) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    assert_eq!(head[3], 0x4, "first frame is not SETTINGS: {head:?}");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_watch_beyond_the_per_stream_limit_is_canceled_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(BackendKind::Memory, dir.path(), |c| {
        c.with_max_watchers_per_stream(2)
    })
    .await;
    let mut client = common::connect(&server).await;
    let (mut watcher, mut stream) = client
        .watch("a", Some(WatchOptions::new().with_watch_id(1)))
        .await
        .unwrap()
        .split();
    watcher
        .watch("b", Some(WatchOptions::new().with_watch_id(2)))
        .await
        .unwrap();
    watcher
        .watch("c", Some(WatchOptions::new().with_watch_id(3)))
        .await
        .unwrap();
    let mut created = Vec::new();
    while created.len() < 3 {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(r.created(), "{r:?}");
        created.push((r.watch_id(), r.canceled(), r.cancel_reason().to_string()));
    }
    created.sort();
    assert_eq!(
        created,
        vec![
            (1, false, String::new()),
            (2, false, String::new()),
            (
                3,
                true,
                "rusd: too many watchers on this stream (--max-watchers-per-stream 2)".into()
            ),
        ]
    );
    // The stream and its two watchers go on.
    client.put("b", "x", None).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.watch_id(), 2);
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Put);
    assert_eq!(r.events()[0].kv().unwrap().value(), b"x");
    server.shutdown().await.unwrap();
}

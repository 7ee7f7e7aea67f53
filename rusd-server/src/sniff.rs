//! Protocol detection on the client listener: gRPC (HTTP/2 with prior knowledge) and HTTP/1.1
//! share the port, as on etcd's client port.
//!
//! [`detect`] peeks (never consumes) the first bytes of an accepted connection: a connection
//! that opens with the HTTP/2 client preface goes to tonic, anything else to the HTTP/1.1
//! service ([`crate::http::serve_connection`]).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Opens with the HTTP/2 preface: gRPC.
    Http2,
    /// Anything else (HTTP/1.x).
    Http1,
    /// Closed before sending a byte.
    Closed,
}

/// Peeks at `stream` until its first bytes tell the protocol apart. Bounded by the caller's
/// timeout: a client that sends a partial preface and stalls keeps this waiting.
pub async fn detect(stream: &TcpStream) -> io::Result<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Protocol::Closed);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // A prefix of the preface: wait for the rest (peek returns at once while data waits).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn classify(bytes: &'static [u8]) -> Protocol {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for chunk in bytes.chunks(5) {
                c.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // End of data: an empty connection reads as closed.
            c.shutdown().await.unwrap();
            c
        });
        let (s, _) = l.accept().await.unwrap();
        let p = detect(&s).await.unwrap();
        drop(client.await.unwrap());
        p
    }

    #[tokio::test]
    async fn tells_http2_from_http1() {
        assert_eq!(classify(H2_PREFACE).await, Protocol::Http2);
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\n\r\n").await,
            Protocol::Http1
        );
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n").await, Protocol::Http1);
        assert_eq!(classify(b"").await, Protocol::Closed);
    }
}

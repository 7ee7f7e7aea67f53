//! A read-side filter for client HTTP/2 connections that repairs the `:authority` pseudo-header
//! of requests whose authority carries a URL scheme.
//!
//! etcdctl 3.4 dials `endpoint status`, `endpoint hashkv`, `defrag` and `move-leader` through
//! gRPC's passthrough resolver with the endpoint as given, so with `--endpoints=http://host:port`
//! it sends `:authority: http://host:port`. grpc-go servers accept that; the `h2` crate behind
//! tonic resets such streams with `PROTOCOL_ERROR`. [`AuthorityFix`] parses the client's frames,
//! decodes every header block (HPACK, with the client's dynamic table), replaces an authority
//! `scheme://rest` by `rest`, and re-encodes the block with literal representations only (so the
//! server's dynamic table is never used and both sides stay consistent). Every other frame is
//! passed through byte for byte. A connection that does not start with the HTTP/2 client
//! preface is passed through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may announce: re-encoded blocks are split at it.
const MAX_FRAME: usize = 16_384;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Checking the client preface.
    Preface,
    /// Parsing frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: bytes pass unchanged.
    Passthrough,
}

struct Pending {
    stream_id: [u8; 4],
    flags: u8,
    block: Vec<u8>,
}

/// Wraps a client connection; see the [module docs](self).
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    raw: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    pending: Option<Pending>,
    decoder: fluke_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> std::fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S> AuthorityFix<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            pending: None,
            decoder: fluke_hpack::Decoder::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be processed from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        if self.mode == Mode::Preface {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.mode = Mode::Passthrough;
            } else if n == PREFACE.len() {
                self.out.extend(self.raw.drain(..n));
                self.mode = Mode::Frames;
            } else {
                return Ok(());
            }
        }
        if self.mode == Mode::Passthrough {
            self.out.append(&mut self.raw);
            return Ok(());
        }
        let mut start = 0;
        while self.raw.len() - start >= FRAME_HEADER {
            let h = &self.raw[start..start + FRAME_HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (ty, flags) = (h[3], h[4]);
            let stream_id = [h[5], h[6], h[7], h[8]];
            let end = start + FRAME_HEADER + len;
            if self.raw.len() < end {
                break;
            }
            let payload = &self.raw[start + FRAME_HEADER..end];
            match ty {
                TYPE_HEADERS => {
                    if self.pending.is_some() {
                        return Err(protocol("HEADERS while a header block is open"));
                    }
                    let mut p = payload;
                    let mut pad = 0usize;
                    if flags & FLAG_PADDED != 0 {
                        pad = usize::from(*p.first().ok_or_else(|| protocol("short HEADERS"))?);
                        p = &p[1..];
                    }
                    if flags & FLAG_PRIORITY != 0 {
                        p = p.get(5..).ok_or_else(|| protocol("short HEADERS"))?;
                    }
                    let block = p
                        .get(
                            ..p.len()
                                .checked_sub(pad)
                                .ok_or_else(|| protocol("bad padding"))?,
                        )
                        .ok_or_else(|| protocol("bad padding"))?
                        .to_vec();
                    self.pending = Some(Pending {
                        stream_id,
                        flags,
                        block,
                    });
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block()?;
                    }
                }
                TYPE_CONTINUATION => {
                    let p = self
                        .pending
                        .as_mut()
                        .ok_or_else(|| protocol("CONTINUATION without HEADERS"))?;
                    p.block.extend_from_slice(payload);
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block()?;
                    }
                }
                _ => {
                    if self.pending.is_some() {
                        return Err(protocol("frame inside a header block"));
                    }
                    self.out.extend_from_slice(&self.raw[start..end]);
                }
            }
            start = end;
        }
        self.raw.drain(..start);
        Ok(())
    }

    /// Decodes the pending header block, repairs the authority, and emits HEADERS (and
    /// CONTINUATION) frames with the re-encoded block.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&p.block, |name, value| {
                headers.push((name.into_owned(), value.into_owned()))
            })
            .map_err(|e| protocol(&format!("bad header block: {e:?}")))?;
        let mut block = Vec::with_capacity(p.block.len() + 32);
        for (name, mut value) in headers {
            if name == b":authority" {
                if let Some(i) = value.windows(3).position(|w| w == b"://") {
                    value.drain(..i + 3);
                    while value.last() == Some(&b'/') {
                        value.pop();
                    }
                }
            }
            // Literal header field without indexing, new name (RFC 7541 6.2.2).
            block.push(0);
            encode_string(&name, &mut block);
            encode_string(&value, &mut block);
        }
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let (ty, mut flags) = if first {
                (TYPE_HEADERS, p.flags & FLAG_END_STREAM)
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let len = chunk.len();
            self.out.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                ty,
                flags,
            ]);
            self.out.extend_from_slice(&p.stream_id);
            self.out.extend_from_slice(chunk);
            first = false;
            if last {
                break;
            }
        }
        Ok(())
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http2: {what}"))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1); `first` holds the high bits.
fn encode_int(mut v: usize, n: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK string literal without Huffman coding.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !this.raw.is_empty() {
                this.process()?;
                if !this.out.is_empty() {
                    continue;
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn decode_frames(mut data: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let len =
                (usize::from(data[0]) << 16) | (usize::from(data[1]) << 8) | usize::from(data[2]);
            let id = u32::from_be_bytes([data[5], data[6], data[7], data[8]]);
            out.push((data[3], data[4], id, data[9..9 + len].to_vec()));
            data = &data[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn repairs_authority_and_keeps_other_frames() {
        let mut enc = fluke_hpack::Encoder::new();
        let req = |auth: &'static [u8]| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (&b":scheme"[..], &b"http"[..]),
                (&b":path"[..], &b"/etcdserverpb.Maintenance/Status"[..]),
                (&b":authority"[..], auth),
                (&b"content-type"[..], &b"application/grpc"[..]),
            ]
        };
        let b1 = enc.encode(req(b"http://127.0.0.1:2379"));
        // The second request references the first one's dynamic-table entries.
        let b2 = enc.encode(req(b"http://127.0.0.1:2379"));
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let data = frame(0x0, 1, 1, b"\0\0\0\0\0");
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        // First block split over HEADERS + CONTINUATION, padded and with priority.
        let (a, b) = b1.split_at(7);
        let mut first = vec![2u8];
        first.extend_from_slice(&[0, 0, 0, 0, 16]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &first));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(&data);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b2,
        ));

        let mut fixed = AuthorityFix::new(&input[..]);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let frames = decode_frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frame(frames[0].0, frames[0].1, frames[0].2, &frames[0].3),
            settings
        );
        assert_eq!(
            frame(frames[2].0, frames[2].1, frames[2].2, &frames[2].3),
            data
        );
        let mut dec = fluke_hpack::Decoder::new();
        for (i, id, flags) in [
            (1usize, 1u32, FLAG_END_HEADERS),
            (3, 3, FLAG_END_HEADERS | FLAG_END_STREAM),
        ] {
            assert_eq!(
                (frames[i].0, frames[i].1, frames[i].2),
                (TYPE_HEADERS, flags, id)
            );
            let h = dec.decode(&frames[i].3).unwrap();
            assert_eq!(h[3], (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()));
            assert_eq!(
                h[2],
                (
                    b":path".to_vec(),
                    b"/etcdserverpb.Maintenance/Status".to_vec()
                )
            );
            assert_eq!(h.len(), 5);
        }
    }

    #[tokio::test]
    async fn passes_non_http2_through() {
        let input = b"GET /health HTTP/1.1\r\n\r\n".to_vec();
        let mut fixed = AuthorityFix::new(&input[..]);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn random_header_blocks_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let len = (rnd() % 64) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            let flags =
                (rnd() as u8) & (FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM);
            let ty = if rnd() % 4 == 0 {
                TYPE_CONTINUATION
            } else {
                TYPE_HEADERS
            };
            let mut input = PREFACE.to_vec();
            input.extend(frame(ty, flags, 1, &payload));
            let mut fixed = AuthorityFix::new(&input[..]);
            let mut out = Vec::new();
            // Either a clean result or an error; never a panic.
            let _ = fixed.read_to_end(&mut out).await;
        }
    }

    #[test]
    fn hpack_integers() {
        let mut v = Vec::new();
        encode_int(10, 5, 0, &mut v);
        assert_eq!(v, [10]);
        v.clear();
        encode_int(1337, 5, 0, &mut v);
        assert_eq!(v, [31, 154, 10]);
    }
}

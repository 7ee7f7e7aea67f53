//! A read-side filter for client HTTP/2 connections that repairs the `:authority` pseudo-header
//! of requests whose authority carries a URL scheme, with bounded memory and no panics on any
//! input.
//!
//! etcdctl 3.4 dials `endpoint status`, `endpoint hashkv`, `defrag` and `move-leader` through
//! gRPC's passthrough resolver with the endpoint as given, so with `--endpoints=http://host:port`
//! it sends `:authority: http://host:port`. grpc-go servers accept that; the `h2` crate behind
//! tonic resets such streams with `PROTOCOL_ERROR`. [`AuthorityFix`] parses the client's frames,
//! decodes every header block (HPACK, with the client's dynamic table) and checks its
//! authority. Blocks pass to h2 as the client sent them (h2's decoder then follows the client's
//! table, as ours does) until the first one whose authority is `scheme://rest`: from that block
//! on, every block is re-encoded with the filter's own HPACK encoder, the authority replaced by
//! `rest`; the first re-encoded block starts with two table size updates (to 0, then back to
//! 4096) that empty h2's table, so that from there h2's decoder mirrors the filter's encoder.
//! A client that never sends such an authority (every gRPC client but etcdctl's few commands)
//! costs the decoding only, not a re-encoding. Every other frame is passed through byte for
//! byte. A connection that does not start with the HTTP/2 client preface is passed through
//! untouched.
//!
//! # HPACK implementation
//!
//! Decoding and encoding use `loona-hpack` 0.4.3, the maintained successor of `fluke-hpack`
//! (which unwrapped the integer of a dynamic-table size update, so a block `0x3F` panicked the
//! connection task). Its decoder returns errors for truncated integers, integers longer than five
//! octets, out-of-range indices, bad Huffman codes and table-size updates above the allowed
//! maximum; it has no header-list limit and its integer decoder relies on 64-bit `usize`. The
//! other candidates were rejected: `hpack` 0.3.0 and `hpack-patched` 0.3.0 keep the same
//! size-update `unwrap`, and `httlib-hpack` 0.1.3 has no header-list limit and one release. So
//! every block is first checked by [`check_block`], a structural walk of the block (no state,
//! no allocation) that rejects any integer above [`MAX_HPACK_INT`] (so no decoder arithmetic can
//! overflow, even on 32-bit targets), any index above the largest index a 4096-octet table can
//! hold, a size update above [`MAX_TABLE_SIZE`] or after a header field, and any string running
//! past the block; the decoded header list is then bounded as it is produced (headers past
//! [`MAX_HEADER_LIST`] are not kept, the block is refused). Huffman-coded strings are decoded
//! before the block reaches `loona-hpack` (`unhuffman`), with a decoding trie built at compile
//! time (`crate::huffman`): `loona-hpack` builds a new table for every coded string, which cost
//! 12-17 % of the server's CPU under load, and looks up each bit in hash maps.
//!
//! # Limits and answers
//!
//! | limit | value | answer on violation |
//! | --- | --- | --- |
//! | frame payload (SETTINGS_MAX_FRAME_SIZE, which rusd does not raise) | [`MAX_FRAME`] = 16 KiB | GOAWAY `FRAME_SIZE_ERROR` (as h2), checked on the frame header, before any payload is buffered |
//! | header block (HEADERS + CONTINUATION fragments) | [`MAX_BLOCK`] = 64 KiB | GOAWAY `COMPRESSION_ERROR` (h2's answer to an over-long block) |
//! | CONTINUATION frames per block | [`MAX_CONTINUATIONS`] = 16 | GOAWAY `ENHANCE_YOUR_CALM` (as h2's `too_many_continuations`) |
//! | dynamic table size (SETTINGS_HEADER_TABLE_SIZE default, which rusd does not raise) | [`MAX_TABLE_SIZE`] = 4096 | GOAWAY `COMPRESSION_ERROR` (RFC 7541 4.2, as etcd) |
//! | decoded header list (RFC 7540 size: name + value + 32 per field) | [`MAX_HEADER_LIST`] = 64 KiB | GOAWAY `ENHANCE_YOUR_CALM` (as h2's `header_list_way_too_large`) |
//! | any other HPACK decoding error | | GOAWAY `COMPRESSION_ERROR` (RFC 7540 4.3, as etcd/grpc-go) |
//! | frame inside a header block, CONTINUATION on another stream or without HEADERS, HEADERS on stream 0, bad padding | | GOAWAY `PROTOCOL_ERROR` (RFC 7540 6.2, 6.10, as h2) |
//!
//! The header-list limit is a memory guard, not the policy: it is 4 times hyper's default
//! SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB, which tonic keeps), so lists between 16 and 64 KiB still
//! reach h2 and get h2's own answer; etcd's grpc-go default (16 MiB) would let a 4 KiB table
//! entry referenced once per octet expand a 64 KiB block into 256 MiB.
//!
//! After a violation no further client byte is decoded or forwarded: the frames before it are
//! delivered, then the filter writes a GOAWAY (last stream id: the highest stream whose HEADERS
//! it forwarded) to the client between two of h2's outgoing frames, and ends the read side
//! (end of file), so h2 finishes and closes the connection. Passing the offending frames through
//! for h2 to reject is not possible in general: this filter consumed the client's dynamic table
//! and h2 has never seen it, so h2 would decode a different header list (or none) and answer with
//! another code. No RST_STREAM is sent: every violation above is a connection error in RFC 7540.
//!
//! # Memory
//!
//! Per connection, [`AuthorityFix::buffered`] (unprocessed input, the open header block, output
//! not yet read by h2) never exceeds [`BUFFER_BOUND`] =
//! `(9 + MAX_FRAME - 1 + READ_CHUNK) + MAX_BLOCK + (OUT_SOFT - 1 + MAX_HEADER_LIST + 4 * 9)`
//! = 180,267 bytes; transiently, while a block is re-encoded, the decoded list (at most
//! [`MAX_HEADER_LIST`] of names and values), the decoder's and encoder's tables (4096 octets of
//! entries each, RFC 7541 accounting), the block with its Huffman-coded strings decoded (at
//! most 8/5 of [`MAX_BLOCK`] plus 3 octets per string longer than 80 octets) come on top
//! (the Huffman decoding trie is a 1 KiB constant shared by every connection): under 450 KiB
//! per connection, whatever the client sends.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_GOAWAY: u8 = 0x7;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The largest frame payload accepted from a client: the default SETTINGS_MAX_FRAME_SIZE, which
/// h2 announces for rusd (tonic's `max_frame_size` is not set). Re-encoded blocks are split at it.
pub const MAX_FRAME: usize = 16_384;
/// The largest header block (HEADERS and CONTINUATION fragments, padding excluded).
pub const MAX_BLOCK: usize = 64 * 1024;
/// The most CONTINUATION frames after one HEADERS frame.
pub const MAX_CONTINUATIONS: usize = 16;
/// The largest HPACK dynamic table the client may use: SETTINGS_HEADER_TABLE_SIZE's default,
/// which rusd does not change.
pub const MAX_TABLE_SIZE: usize = 4096;
/// The largest decoded header list, counted as RFC 7540 6.5.2 does (name + value + 32 octets per
/// field).
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// The largest integer [`check_block`] lets through: above any string length a [`MAX_BLOCK`]
/// block can hold, any index and any allowed table size.
pub const MAX_HPACK_INT: usize = 1 << 20;
/// Bytes read from the connection at a time.
pub const READ_CHUNK: usize = 16 * 1024;
/// The filter stops processing input once this much output waits for h2.
pub const OUT_SOFT: usize = 16 * 1024;
/// The bound on [`AuthorityFix::buffered`]: unprocessed input (an incomplete frame and one read),
/// an open header block, and pending output (below [`OUT_SOFT`] plus one re-encoded block of at
/// most [`MAX_HEADER_LIST`] octets in at most four frames).
pub const BUFFER_BOUND: usize = (FRAME_HEADER + MAX_FRAME - 1 + READ_CHUNK)
    + MAX_BLOCK
    + (OUT_SOFT - 1 + MAX_HEADER_LIST + 4 * FRAME_HEADER);
/// Entries of the static table (RFC 7541 Appendix A).
const STATIC_ENTRIES: usize = 61;
/// The largest valid index: the static table and a full table of the smallest (32-octet) entries.
const MAX_INDEX: usize = STATIC_ENTRIES + MAX_TABLE_SIZE / 32;

/// HTTP/2 error codes (RFC 7540 7) sent in the GOAWAY that answers a violation.
pub mod reason {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 0x2;
    /// FRAME_SIZE_ERROR.
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    /// COMPRESSION_ERROR.
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// Why a connection was closed: the HTTP/2 error code sent in the GOAWAY and a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The HTTP/2 error code (see [`reason`]).
    pub code: u32,
    /// What the client did.
    pub what: &'static str,
}

fn violation(code: u32, what: &'static str) -> Violation {
    Violation { code, what }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Checking the client preface.
    Preface,
    /// Parsing frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: bytes pass unchanged.
    Passthrough,
    /// A violation was found: the GOAWAY goes out, then the read side ends.
    Closed,
}

struct Pending {
    stream_id: u32,
    flags: u8,
    block: Vec<u8>,
    continuations: usize,
}

/// Follows the frames h2 writes, so that a GOAWAY is only ever put between two of them.
#[derive(Debug, Default)]
struct FrameTracker {
    head: [u8; FRAME_HEADER],
    have: usize,
    left: usize,
}

impl FrameTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = data.get(n..).unwrap_or_default();
            } else {
                let n = (FRAME_HEADER - self.have).min(data.len());
                if let (Some(dst), Some(src)) =
                    (self.head.get_mut(self.have..self.have + n), data.get(..n))
                {
                    dst.copy_from_slice(src);
                }
                self.have += n;
                data = data.get(n..).unwrap_or_default();
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    self.left = frame_len(&self.head);
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

fn frame_len(h: &[u8; FRAME_HEADER]) -> usize {
    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2])
}

/// Wraps a client connection; see the [module docs](self).
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    raw: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Header blocks go to h2 re-encoded by `encoder` (from the first block that needed a
    /// repair on); before, they pass as the client sent them.
    reencode: bool,
    eof: bool,
    last_stream: u32,
    violation: Option<Violation>,
    goaway: Vec<u8>,
    goaway_pos: usize,
    written: FrameTracker,
    read_waker: Option<Waker>,
}

impl<S> std::fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("mode", &self.mode)
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

impl<S> AuthorityFix<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            reencode: false,
            eof: false,
            last_stream: 0,
            violation: None,
            goaway: Vec::new(),
            goaway_pos: 0,
            written: FrameTracker::default(),
            read_waker: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The violation that closed the connection, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Client bytes held by the filter: unprocessed input, the open header block and output not
    /// yet read by h2. Never above [`BUFFER_BOUND`] after a read.
    pub fn buffered(&self) -> usize {
        self.raw.len()
            + self.pending.as_ref().map_or(0, |p| p.block.len())
            + (self.out.len() - self.out_pos.min(self.out.len()))
    }

    /// Stops decoding after `v`: the input is dropped and the GOAWAY queued.
    fn close(&mut self, v: Violation) {
        tracing::debug!(
            code = v.code,
            what = v.what,
            "http2 client violation; GOAWAY"
        );
        self.mode = Mode::Closed;
        self.violation = Some(v);
        self.raw = Vec::new();
        self.pending = None;
        let mut g = Vec::with_capacity(FRAME_HEADER + 8);
        g.extend_from_slice(&[0, 0, 8, TYPE_GOAWAY, 0, 0, 0, 0, 0]);
        g.extend_from_slice(&self.last_stream.to_be_bytes());
        g.extend_from_slice(&v.code.to_be_bytes());
        self.goaway = g;
        self.goaway_pos = 0;
    }

    fn goaway_pending(&self) -> bool {
        self.mode == Mode::Closed && self.goaway_pos < self.goaway.len()
    }

    /// Moves what can be processed from `raw` to `out`.
    fn process(&mut self) -> Result<(), Violation> {
        if self.mode == Mode::Preface {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw.get(..n) != PREFACE.get(..n) {
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
        if self.mode != Mode::Frames {
            return Ok(());
        }
        let mut start = 0;
        let result = self.frames(&mut start);
        self.raw.drain(..start.min(self.raw.len()));
        result
    }

    /// Processes whole frames from `raw[*start..]`, advancing `start` past each one.
    fn frames(&mut self, start: &mut usize) -> Result<(), Violation> {
        while self.out.len() < OUT_SOFT {
            let Some(h) = self.raw.get(*start..*start + FRAME_HEADER) else {
                break;
            };
            let mut head = [0u8; FRAME_HEADER];
            head.copy_from_slice(h);
            let len = frame_len(&head);
            if len > MAX_FRAME {
                return Err(violation(reason::FRAME_SIZE_ERROR, "frame over 16 KiB"));
            }
            let (ty, flags) = (head[3], head[4]);
            let stream_id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let end = *start + FRAME_HEADER + len;
            let Some(payload) = self.raw.get(*start + FRAME_HEADER..end) else {
                break;
            };
            match ty {
                TYPE_HEADERS => {
                    if self.pending.is_some() {
                        return Err(violation(
                            reason::PROTOCOL_ERROR,
                            "HEADERS inside a header block",
                        ));
                    }
                    if stream_id == 0 {
                        return Err(violation(reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
                    }
                    let block = headers_fragment(payload, flags)?.to_vec();
                    self.pending = Some(Pending {
                        stream_id,
                        flags,
                        block,
                        continuations: 0,
                    });
                }
                TYPE_CONTINUATION => {
                    let p = match self.pending.as_mut() {
                        Some(p) if p.stream_id == stream_id => p,
                        Some(_) => {
                            return Err(violation(
                                reason::PROTOCOL_ERROR,
                                "CONTINUATION on another stream",
                            ))
                        }
                        None => {
                            return Err(violation(
                                reason::PROTOCOL_ERROR,
                                "CONTINUATION without HEADERS",
                            ))
                        }
                    };
                    p.continuations += 1;
                    if p.continuations > MAX_CONTINUATIONS {
                        return Err(violation(
                            reason::ENHANCE_YOUR_CALM,
                            "too many CONTINUATION frames",
                        ));
                    }
                    if p.block.len() + payload.len() > MAX_BLOCK {
                        return Err(violation(
                            reason::COMPRESSION_ERROR,
                            "header block over 64 KiB",
                        ));
                    }
                    p.block.extend_from_slice(payload);
                }
                _ => {
                    if self.pending.is_some() {
                        return Err(violation(
                            reason::PROTOCOL_ERROR,
                            "frame inside a header block",
                        ));
                    }
                    self.out
                        .extend_from_slice(payload_with_head(&self.raw, *start, end));
                }
            }
            *start = end;
            if (ty == TYPE_HEADERS || ty == TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
                self.finish_block()?;
            }
        }
        Ok(())
    }

    /// Decodes the pending header block, repairs the authority, and emits HEADERS (and
    /// CONTINUATION) frames with the re-encoded block.
    fn finish_block(&mut self) -> Result<(), Violation> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        check_block(&p.block)?;
        let plain = unhuffman(&p.block)?;
        // The decoded list: names and values one after the other in `text`, with their ends.
        let mut text: Vec<u8> = Vec::new();
        let mut fields: Vec<(usize, usize)> = Vec::new();
        let mut list = 0usize;
        let mut over = false;
        let mut repair = false;
        self.decoder
            .decode_with_cb(
                plain.as_deref().unwrap_or(&p.block),
                |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                    if over {
                        return;
                    }
                    let size = name.len() + value.len() + 32;
                    if list + size > MAX_HEADER_LIST {
                        over = true;
                        return;
                    }
                    list += size;
                    if &*name == b":authority" && authority_host(&value).is_some() {
                        repair = true;
                    }
                    text.extend_from_slice(&name);
                    let name_end = text.len();
                    text.extend_from_slice(&value);
                    fields.push((name_end, text.len()));
                },
            )
            .map_err(|_| violation(reason::COMPRESSION_ERROR, "bad header block"))?;
        if over {
            return Err(violation(
                reason::ENHANCE_YOUR_CALM,
                "decoded header list over 64 KiB",
            ));
        }
        self.last_stream = self.last_stream.max(p.stream_id);
        let block = if self.reencode || repair {
            let mut block = Vec::with_capacity(list + 4);
            if !self.reencode {
                // h2's table holds what the client's blocks put there; this encoder's is
                // empty: empty h2's too (size 0), then give it the full size back.
                block.extend_from_slice(&TABLE_RESET);
                self.reencode = true;
            }
            let mut start = 0;
            let headers = fields.iter().map(|&(name_end, end)| {
                let name = text.get(start..name_end).unwrap_or_default();
                let mut value = text.get(name_end..end).unwrap_or_default();
                start = end;
                if name == b":authority" {
                    value = authority_host(value).unwrap_or(value);
                }
                (name, value)
            });
            self.encoder
                .encode_into(headers, &mut block)
                .map_err(|_| violation(reason::INTERNAL_ERROR, "header block encoding failed"))?;
            block
        } else {
            // Nothing to repair and h2's table is the client's: the block as the client sent it.
            p.block
        };
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let last = chunks.peek().is_none();
            let (ty, mut flags) = if first {
                (TYPE_HEADERS, p.flags & FLAG_END_STREAM)
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let len = chunk.len().to_be_bytes();
            let n = len.len();
            self.out
                .extend_from_slice(&[len[n - 3], len[n - 2], len[n - 1], ty, flags]);
            self.out.extend_from_slice(&p.stream_id.to_be_bytes());
            self.out.extend_from_slice(chunk);
            first = false;
            if last {
                break;
            }
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> AuthorityFix<S> {
    /// Writes what is left of the queued GOAWAY.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.goaway.get(self.goaway_pos..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.goaway_pos += n,
            }
        }
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Before h2 writes: sends a queued GOAWAY if h2 is between two frames.
    fn poll_before_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.goaway_pending() && self.written.at_boundary() {
            self.poll_goaway(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// Two dynamic table size updates (RFC 7541 6.3) that start the first re-encoded block: to 0,
/// which empties h2's table, then back to [`MAX_TABLE_SIZE`] (4096: `0x3f 0xe1 0x1f`).
const TABLE_RESET: [u8; 4] = [0x20, 0x3f, 0xe1, 0x1f];

/// The `rest` of an authority `scheme://rest` (trailing `/` removed), `None` when it has no
/// scheme.
fn authority_host(value: &[u8]) -> Option<&[u8]> {
    let i = value.windows(3).position(|w| w == b"://")?;
    let mut host = value.get(i + 3..)?;
    while let Some(h) = host.strip_suffix(b"/") {
        host = h;
    }
    Some(host)
}

/// The bytes of the frame `raw[start..end]`, header included.
fn payload_with_head(raw: &[u8], start: usize, end: usize) -> &[u8] {
    raw.get(start..end).unwrap_or_default()
}

/// The header block fragment of a HEADERS payload: padding and priority removed.
fn headers_fragment(payload: &[u8], flags: u8) -> Result<&[u8], Violation> {
    let bad = || violation(reason::PROTOCOL_ERROR, "bad HEADERS padding or priority");
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*p.first().ok_or_else(bad)?);
        p = p.get(1..).ok_or_else(bad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        p = p.get(5..).ok_or_else(bad)?;
    }
    let len = p.len().checked_sub(pad).ok_or_else(bad)?;
    p.get(..len).ok_or_else(bad)
}

/// Reads an HPACK integer with an `n`-bit prefix (RFC 7541 5.1) at the start of `buf`: its value
/// and length, or `None` when it is truncated or above [`MAX_HPACK_INT`].
fn read_int(buf: &[u8], n: u8) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*buf.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        v = v.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if v > MAX_HPACK_INT {
            return None;
        }
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    None
}

/// Checks the structure of a header block before it reaches the HPACK decoder: every integer
/// complete and at most [`MAX_HPACK_INT`], every index at most the static table plus a full
/// 4096-octet dynamic table, size updates at most [`MAX_TABLE_SIZE`] and only before the first
/// field (RFC 7541 4.2), every string inside the block.
pub fn check_block(block: &[u8]) -> Result<(), Violation> {
    let bad = |what| violation(reason::COMPRESSION_ERROR, what);
    let mut i = 0;
    let mut fields = false;
    while let Some(&b) = block.get(i) {
        let rest = block.get(i..).unwrap_or_default();
        let (prefix, literal) = if b & 0x80 != 0 {
            (7, false)
        } else if b & 0x40 != 0 {
            (6, true)
        } else if b & 0x20 != 0 {
            if fields {
                return Err(bad("table size update after a header field"));
            }
            let (size, n) = read_int(rest, 5).ok_or_else(|| bad("bad integer"))?;
            if size > MAX_TABLE_SIZE {
                return Err(bad("table size update over 4096"));
            }
            i += n;
            continue;
        } else {
            (4, true)
        };
        fields = true;
        let (index, n) = read_int(rest, prefix).ok_or_else(|| bad("bad integer"))?;
        if index > MAX_INDEX || (!literal && index == 0) {
            return Err(bad("index beyond the table"));
        }
        i += n;
        if literal {
            let strings = if index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let rest = block.get(i..).unwrap_or_default();
                let (len, n) = read_int(rest, 7).ok_or_else(|| bad("bad string length"))?;
                if len > rest.len() - n {
                    return Err(bad("string past the block"));
                }
                i += n + len;
            }
        }
    }
    Ok(())
}

/// The block of a header block that [`check_block`] accepted, with every Huffman-coded string
/// literal replaced by its decoded octets sent raw (`None`: it has none, use it as it is).
/// The HPACK decoder then never Huffman-decodes: `loona-hpack` builds a new Huffman decoding
/// table (257 hash-map entries) for every coded string, which cost 12-17 % of the server's
/// CPU under load, and looks each bit up in it; here [`crate::huffman`]'s compile-time trie
/// serves every string (one array index per bit). The result is at most
/// 8/5 of the block plus 3 octets per string (the shortest code is 5 bits). A bad code or
/// padding is the decoder's `COMPRESSION_ERROR`, as before.
fn unhuffman(block: &[u8]) -> Result<Option<Vec<u8>>, Violation> {
    let bad = |what| violation(reason::COMPRESSION_ERROR, what);
    let mut out: Option<Vec<u8>> = None;
    // Octets of `block` before `copied` are in `out` (once it exists).
    let mut copied = 0;
    let mut i = 0;
    while let Some(&b) = block.get(i) {
        let rest = block.get(i..).unwrap_or_default();
        let (prefix, literal) = if b & 0x80 != 0 {
            (7, false)
        } else if b & 0x40 != 0 {
            (6, true)
        } else if b & 0x20 != 0 {
            let (_, n) = read_int(rest, 5).ok_or_else(|| bad("bad integer"))?;
            i += n;
            continue;
        } else {
            (4, true)
        };
        let (index, n) = read_int(rest, prefix).ok_or_else(|| bad("bad integer"))?;
        i += n;
        if !literal {
            continue;
        }
        for _ in 0..if index == 0 { 2 } else { 1 } {
            let rest = block.get(i..).unwrap_or_default();
            let huffman_coded = rest.first().is_some_and(|b| b & 0x80 != 0);
            let (len, n) = read_int(rest, 7).ok_or_else(|| bad("bad string length"))?;
            let coded = rest
                .get(n..n + len)
                .ok_or_else(|| bad("string past the block"))?;
            if huffman_coded {
                let decoded = crate::huffman::decode(coded).map_err(|_| bad("bad Huffman code"))?;
                let o = out.get_or_insert_with(|| Vec::with_capacity(block.len() * 8 / 5 + 64));
                o.extend_from_slice(block.get(copied..i).unwrap_or_default());
                loona_hpack::encoder::encode_integer_into(decoded.len(), 7, 0, o)
                    .map_err(|_| bad("string too long"))?;
                o.extend_from_slice(&decoded);
                copied = i + n + len;
            }
            i += n + len;
        }
    }
    if let Some(o) = out.as_mut() {
        o.extend_from_slice(block.get(copied..).unwrap_or_default());
    }
    Ok(out)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(rest) = this.out.get(this.out_pos..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                this.out_pos += n;
                if this.out_pos >= this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Closed {
                if this.goaway_pending() {
                    if !this.written.at_boundary() {
                        // h2 is inside a frame; its next write sends the GOAWAY and wakes us.
                        this.read_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    match this.poll_goaway(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if !this.raw.is_empty() {
                if let Err(v) = this.process() {
                    this.close(v);
                }
                if !this.out.is_empty() || this.mode == Mode::Closed {
                    continue;
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
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
        let this = &mut *self;
        match this.poll_before_write(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written.feed(buf.get(..n).unwrap_or(buf));
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.poll_before_write(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let mut left = n;
                for b in bufs {
                    let k = left.min(b.len());
                    this.written.feed(b.get(..k).unwrap_or_default());
                    left -= k;
                    if left == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_before_write(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_before_write(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
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

    /// RFC 7541 C.4.1: the same request with Huffman-coded and with raw strings.
    #[test]
    fn unhuffman_sends_huffman_strings_raw_and_refuses_bad_codes() {
        let coded: &[u8] = &[
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut raw = vec![0x82, 0x86, 0x84, 0x41, 0x0f];
        raw.extend_from_slice(b"www.example.com");
        check_block(coded).unwrap();
        assert_eq!(unhuffman(coded).unwrap(), Some(raw.clone()));
        // Nothing coded: nothing copied.
        assert_eq!(unhuffman(&raw).unwrap(), None);
        // A literal with a new name: both strings decoded, the rest copied around them.
        let mut two = vec![0x40, 0x82, 0x94, 0xe7, 0x03];
        two.extend_from_slice(b"abc");
        two.push(0x82);
        let mut want = vec![0x40, 0x03];
        want.extend_from_slice(b"foo");
        want.push(0x03);
        want.extend_from_slice(b"abc");
        want.push(0x82);
        check_block(&two).unwrap();
        assert_eq!(unhuffman(&two).unwrap(), Some(want));
        // The decoders agree on the header lists.
        let list = |block: &[u8]| {
            let mut d = loona_hpack::Decoder::new();
            d.decode(block).unwrap()
        };
        assert_eq!(list(coded), list(&raw));
        // Padding that is not the EOS prefix (all zeros) is a compression error.
        let bad: &[u8] = &[0x41, 0x81, 0x00];
        check_block(bad).unwrap();
        let v = unhuffman(bad).unwrap_err();
        assert_eq!(
            (v.code, v.what),
            (reason::COMPRESSION_ERROR, "bad Huffman code")
        );
    }
    use proptest::prelude::*;

    /// An in-memory connection: `input` is read in pieces of at most `chunk` bytes, writes are
    /// collected in `written`.
    struct Mock {
        input: Vec<u8>,
        pos: usize,
        chunk: usize,
        written: Vec<u8>,
    }

    impl AsyncRead for Mock {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = (self.input.len() - self.pos)
                .min(self.chunk)
                .min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.input[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a run of the filter over some client bytes gave.
    #[derive(Debug)]
    struct Run {
        /// Bytes handed to h2.
        forwarded: Vec<u8>,
        /// Bytes the filter wrote to the client (the GOAWAY).
        written: Vec<u8>,
        violation: Option<Violation>,
        max_buffered: usize,
    }

    /// Reads `input` through the filter to the end, `chunk` client bytes and `read` h2 bytes at a
    /// time.
    fn run(input: &[u8], chunk: usize, read: usize) -> Run {
        let mock = Mock {
            input: input.to_vec(),
            pos: 0,
            chunk: chunk.max(1),
            written: Vec::new(),
        };
        let mut fix = AuthorityFix::new(mock);
        let mut cx = Context::from_waker(Waker::noop());
        let mut forwarded = Vec::new();
        let mut max_buffered = 0;
        let mut space = vec![0u8; read.max(1)];
        loop {
            let mut rb = ReadBuf::new(&mut space);
            match Pin::new(&mut fix).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                Poll::Ready(Ok(())) => forwarded.extend_from_slice(rb.filled()),
                other => panic!("unexpected {other:?}"),
            }
            max_buffered = max_buffered.max(fix.buffered());
        }
        Run {
            forwarded,
            written: fix.get_ref().written.clone(),
            violation: fix.violation(),
            max_buffered,
        }
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn goaway(last: u32, code: u32) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        frame(TYPE_GOAWAY, 0, 0, &p)
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

    const SETTINGS: &[u8] = &[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];

    /// The preface and a SETTINGS frame.
    fn start() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend_from_slice(SETTINGS);
        v
    }

    fn request_block(enc: &mut loona_hpack::Encoder<'_>, auth: &[u8]) -> Vec<u8> {
        enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (&b":scheme"[..], &b"http"[..]),
            (&b":path"[..], &b"/etcdserverpb.KV/Range"[..]),
            (&b":authority"[..], auth),
            (&b"content-type"[..], &b"application/grpc"[..]),
        ])
    }

    /// A literal with incremental indexing of name `x` and a `len`-octet value, then `refs`
    /// references to it (index 62).
    fn bomb(len: usize, refs: usize) -> Vec<u8> {
        let mut b = vec![0x40, 1, b'x'];
        loona_hpack::encoder::encode_integer_into(len, 7, 0, &mut b).unwrap();
        b.extend(std::iter::repeat_n(b'v', len));
        b.extend(std::iter::repeat_n(0xBE, refs));
        b
    }

    /// One HEADERS frame (END_HEADERS) on stream 1 with `block` after [`start`].
    fn one_block(block: &[u8]) -> Vec<u8> {
        let mut input = start();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, block));
        input
    }

    /// Asserts `input` is refused with `code` after `forwarded` reached h2, in every chunking.
    fn assert_refused(input: &[u8], forwarded: &[u8], last: u32, code: u32) {
        for (chunk, read) in [(1, 1), (7, 100), (READ_CHUNK, 16 * 1024), (100_000, 3)] {
            let r = run(input, chunk, read);
            assert_eq!(r.forwarded, forwarded, "chunk {chunk} read {read}");
            assert_eq!(r.written, goaway(last, code), "chunk {chunk} read {read}");
            assert_eq!(r.violation.map(|v| v.code), Some(code));
            assert!(r.max_buffered <= BUFFER_BOUND);
        }
    }

    #[test]
    fn repairs_authority_and_keeps_other_frames() {
        let mut enc = loona_hpack::Encoder::new();
        let b1 = request_block(&mut enc, b"http://127.0.0.1:2379");
        // The second request references the first one's dynamic-table entries.
        let b2 = request_block(&mut enc, b"http://127.0.0.1:2379");
        let data = frame(0x0, 1, 1, b"\0\0\0\0\0");
        let mut input = start();
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
        for (chunk, read) in [(1, 1), (5, 64), (READ_CHUNK, 16 * 1024)] {
            let r = run(&input, chunk, read);
            assert_eq!(r.written, b"");
            assert_eq!(r.violation, None);
            assert_eq!(&r.forwarded[..PREFACE.len()], PREFACE);
            let frames = decode_frames(&r.forwarded[PREFACE.len()..]);
            assert_eq!(frames.len(), 4);
            assert_eq!(
                frame(frames[0].0, frames[0].1, frames[0].2, &frames[0].3),
                SETTINGS
            );
            assert_eq!(
                frame(frames[2].0, frames[2].1, frames[2].2, &frames[2].3),
                data
            );
            let mut dec = loona_hpack::Decoder::new();
            for (i, id, flags) in [
                (1usize, 1u32, FLAG_END_HEADERS),
                (3, 3, FLAG_END_HEADERS | FLAG_END_STREAM),
            ] {
                assert_eq!(
                    (frames[i].0, frames[i].1, frames[i].2),
                    (TYPE_HEADERS, flags, id)
                );
                let h = dec.decode(&frames[i].3).unwrap();
                assert_eq!(h.len(), 5);
                assert_eq!(h[3], (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()));
                assert_eq!(
                    h[2],
                    (b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec())
                );
            }
            // The blocks are exactly what the HPACK encoder gives for the repaired requests,
            // the first one after the table reset.
            let mut e = loona_hpack::Encoder::new();
            let mut first = TABLE_RESET.to_vec();
            first.extend(request_block(&mut e, b"127.0.0.1:2379"));
            assert_eq!(frames[1].3, first);
            assert_eq!(frames[3].3, request_block(&mut e, b"127.0.0.1:2379"));
        }
    }

    #[test]
    fn blocks_pass_verbatim_until_one_needs_a_repair() {
        // The client's encoder fills its dynamic table with the first requests (Huffman-coded
        // strings included); the third request's authority has a scheme and references
        // nothing new, the fourth references the table again.
        let mut enc = loona_hpack::Encoder::new();
        let b1 = request_block(&mut enc, b"127.0.0.1:2379");
        let b2 = request_block(&mut enc, b"127.0.0.1:2379");
        let b3 = request_block(&mut enc, b"http://127.0.0.1:2379/");
        let b4 = request_block(&mut enc, b"127.0.0.1:2379");
        // A Huffman-coded literal (RFC 7541 C.4.1: `www.example.com`) as the authority.
        let huff = [
            0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut input = start();
        for (id, b) in [
            (1u32, &b1[..]),
            (3, &huff[..]),
            (5, &b2),
            (7, &b3),
            (9, &b4),
        ] {
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, id, b));
        }
        for (chunk, read) in [(1, 1), (9, 50), (READ_CHUNK, 16 * 1024)] {
            let r = run(&input, chunk, read);
            assert_eq!(r.violation, None);
            let frames = decode_frames(&r.forwarded[PREFACE.len()..]);
            assert_eq!(frames.len(), 6);
            // Before the repair: the client's own bytes.
            assert_eq!(frames[1].3, b1);
            assert_eq!(frames[2].3, huff);
            assert_eq!(frames[3].3, b2);
            // The repair starts with the table reset, then this filter's encoding.
            let mut e = loona_hpack::Encoder::new();
            let mut repaired = TABLE_RESET.to_vec();
            repaired.extend(request_block(&mut e, b"127.0.0.1:2379"));
            assert_eq!(frames[4].3, repaired);
            assert_eq!(frames[5].3, request_block(&mut e, b"127.0.0.1:2379"));
            // h2's view: one decoder over the forwarded blocks sees every request with the
            // repaired authority, and the Huffman-coded one as sent.
            let mut dec = loona_hpack::Decoder::new();
            for (i, frame) in frames.iter().enumerate().skip(1) {
                let h = dec.decode(&frame.3).unwrap();
                if i == 2 {
                    assert_eq!(
                        h,
                        vec![(b":authority".to_vec(), b"www.example.com".to_vec())]
                    );
                } else {
                    assert_eq!(h.len(), 5, "block {i}");
                    assert_eq!(h[3], (b":authority".to_vec(), b"127.0.0.1:2379".to_vec()));
                }
            }
        }
    }

    #[test]
    fn passes_non_http2_through() {
        let input = b"GET /health HTTP/1.1\r\n\r\n".to_vec();
        let r = run(&input, 3, 5);
        assert_eq!(r.forwarded, input);
        assert_eq!(r.written, b"");
    }

    #[test]
    fn hpack_integers() {
        assert_eq!(read_int(&[10], 5), Some((10, 1)));
        assert_eq!(read_int(&[31, 154, 10], 5), Some((1337, 3)));
        assert_eq!(read_int(&[0x1E], 5), Some((30, 1)));
        assert_eq!(read_int(&[0x3F], 5), None);
        assert_eq!(read_int(&[31], 5), None);
        assert_eq!(read_int(&[31, 154], 5), None);
        assert_eq!(read_int(&[127, 0x81, 0x80, 0x3F], 7), Some((1_032_320, 4)));
        assert_eq!(read_int(&[127, 0x81, 0x80, 0x40], 7), None);
        assert_eq!(read_int(&[127, 0x80, 0x80, 0x80, 0x80, 0], 7), None);
        assert_eq!(read_int(&[255, 0], 8), Some((255, 2)));
    }

    #[test]
    fn lone_0x3f_is_a_compression_error() {
        let input = one_block(&[0x3F]);
        assert_refused(&input, &start(), 0, reason::COMPRESSION_ERROR);
    }

    #[test]
    fn truncated_and_overflowing_integers_are_compression_errors() {
        for block in [
            &[0x3F, 0xE1][..],
            &[0x82, 0x7F],
            &[0x40, 0x7F, 0x80],
            &[
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
            &[0x3F, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            &[
                0x00, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
            ],
            // A string longer than the block.
            &[0x00, 0x05, b'a', b'b'],
        ] {
            assert_refused(&one_block(block), &start(), 0, reason::COMPRESSION_ERROR);
        }
    }

    #[test]
    fn indices_beyond_the_table_are_compression_errors() {
        // 62: the empty dynamic table's first entry (refused by the decoder); 255 and index 0
        // (refused by the structural check).
        for block in [
            &[0xBE][..],
            &[0xFF, 0x80, 0x01],
            &[0x80],
            &[0x7F, 0x80, 0x01, 0x00],
        ] {
            assert_refused(&one_block(block), &start(), 0, reason::COMPRESSION_ERROR);
        }
    }

    #[test]
    fn table_size_updates_are_bounded() {
        // 4097: over SETTINGS_HEADER_TABLE_SIZE.
        assert_refused(
            &one_block(&[0x3F, 0xE2, 0x1F, 0x82]),
            &start(),
            0,
            reason::COMPRESSION_ERROR,
        );
        // After a field (RFC 7541 4.2).
        assert_refused(
            &one_block(&[0x82, 0x20]),
            &start(),
            0,
            reason::COMPRESSION_ERROR,
        );
        // 4096 then `:method GET`: accepted, forwarded as sent (nothing to repair).
        let r = run(&one_block(&[0x3F, 0xE1, 0x1F, 0x82]), 4, 4);
        let mut expect = start();
        expect.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x3F, 0xE1, 0x1F, 0x82],
        ));
        assert_eq!(r.forwarded, expect);
        assert_eq!((r.written, r.violation), (vec![], None));
    }

    #[test]
    fn continuation_flood_is_enhance_your_calm() {
        let mut input = start();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        for _ in 0..MAX_CONTINUATIONS {
            input.extend(frame(TYPE_CONTINUATION, 0, 1, &[]));
        }
        input.extend(std::iter::repeat_n(frame(TYPE_CONTINUATION, 0, 1, &[]), 1000).flatten());
        assert_refused(&input, &start(), 0, reason::ENHANCE_YOUR_CALM);
        // The 16th CONTINUATION may end the block.
        let mut ok = start();
        ok.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        for _ in 0..MAX_CONTINUATIONS - 1 {
            ok.extend(frame(TYPE_CONTINUATION, 0, 1, &[]));
        }
        ok.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[]));
        let r = run(&ok, 1000, 1000);
        let mut expect = start();
        expect.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82]));
        assert_eq!(r.forwarded, expect);
        assert_eq!((r.written, r.violation), (vec![], None));
    }

    #[test]
    fn header_block_over_64_kib_is_a_compression_error() {
        let mut input = start();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0u8; MAX_FRAME]));
        for _ in 0..4 {
            input.extend(frame(TYPE_CONTINUATION, 0, 1, &[0u8; MAX_FRAME]));
        }
        assert_refused(&input, &start(), 0, reason::COMPRESSION_ERROR);
    }

    #[test]
    fn oversized_frame_is_a_frame_size_error_before_its_payload() {
        let mut input = start();
        // A DATA frame announcing 16 MiB - 1, of which only 100 bytes follow.
        input.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0x0, 0, 0, 0, 0, 1]);
        input.extend_from_slice(&[0u8; 100]);
        assert_refused(&input, &start(), 0, reason::FRAME_SIZE_ERROR);
        // 16 KiB + 1 on HEADERS.
        let mut input = start();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x82; MAX_FRAME + 1],
        ));
        assert_refused(&input, &start(), 0, reason::FRAME_SIZE_ERROR);
        // Exactly 16 KiB of DATA passes.
        let mut input = start();
        input.extend(frame(0x0, 0, 1, &[7u8; MAX_FRAME]));
        let r = run(&input, 999, 999);
        assert_eq!((r.forwarded, r.violation), (input, None));
    }

    #[test]
    fn interleaved_frames_in_a_header_block_are_protocol_errors() {
        let mut enc = loona_hpack::Encoder::new();
        let req = request_block(&mut enc, b"127.0.0.1:2379");
        let mut first = start();
        first.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &req));
        let forwarded = run(&first, 100, 100).forwarded;
        for intruder in [
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &[0x82]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, &[0x82]),
            frame(0x0, 0, 3, b"data"),
            frame(0x6, 0, 0, &[0; 8]),
        ] {
            let mut input = first.clone();
            input.extend(frame(TYPE_HEADERS, 0, 3, &[0x82]));
            input.extend(intruder);
            input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]));
            assert_refused(&input, &forwarded, 1, reason::PROTOCOL_ERROR);
        }
        // CONTINUATION without HEADERS, HEADERS on stream 0.
        let mut input = first.clone();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x82]));
        assert_refused(&input, &forwarded, 1, reason::PROTOCOL_ERROR);
        let mut input = first.clone();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82]));
        assert_refused(&input, &forwarded, 1, reason::PROTOCOL_ERROR);
    }

    #[test]
    fn header_reference_bomb_is_enhance_your_calm() {
        // 17 fields of 4033 octets: 68,561 > 64 KiB, from a 4,021-octet block.
        assert_refused(
            &one_block(&bomb(4000, 16)),
            &start(),
            0,
            reason::ENHANCE_YOUR_CALM,
        );
        // A full frame of references: 16 KiB block, 66 MB if it were expanded.
        let mut input = one_block(&bomb(4000, MAX_FRAME - 4006));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x82]));
        assert_refused(&input, &start(), 0, reason::ENHANCE_YOUR_CALM);
        // 16 fields (64,528 octets) pass, re-encoded.
        let r = run(&one_block(&bomb(4000, 15)), READ_CHUNK, 1 << 20);
        assert_eq!(r.violation, None);
        let frames = decode_frames(&r.forwarded[PREFACE.len()..]);
        let h = loona_hpack::Decoder::new().decode(&frames[1].3).unwrap();
        assert_eq!(h.len(), 16);
        assert!(h.iter().all(|(n, v)| n == b"x" && v.len() == 4000));
    }

    #[test]
    fn goaway_waits_for_the_end_of_an_outgoing_frame() {
        let mock = Mock {
            input: one_block(&[0x3F]),
            pos: 0,
            chunk: 1 << 20,
            written: Vec::new(),
        };
        let mut fix = AuthorityFix::new(mock);
        let mut cx = Context::from_waker(Waker::noop());
        let ping = frame(0x6, 0x1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        // h2 wrote half a PING frame.
        assert!(matches!(
            Pin::new(&mut fix).poll_write(&mut cx, &ping[..5]),
            Poll::Ready(Ok(5))
        ));
        let mut space = [0u8; 64];
        let mut rb = ReadBuf::new(&mut space);
        assert!(matches!(
            Pin::new(&mut fix).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rb.filled(), &start()[..]);
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut fix).poll_read(&mut cx, &mut rb).is_pending());
        assert!(matches!(
            Pin::new(&mut fix).poll_write(&mut cx, &ping[5..]),
            Poll::Ready(Ok(12))
        ));
        assert!(matches!(
            Pin::new(&mut fix).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut expect = ping.clone();
        expect.extend(goaway(0, reason::COMPRESSION_ERROR));
        assert_eq!(fix.get_ref().written, expect);
        let mut rb = ReadBuf::new(&mut space);
        assert!(matches!(
            Pin::new(&mut fix).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert!(rb.filled().is_empty());
    }

    #[test]
    fn bound_formula() {
        assert_eq!(BUFFER_BOUND, 180_267);
    }

    /// Header blocks: arbitrary bytes and adversarial pieces.
    fn block_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            Just(vec![0x3F]),
            Just(vec![0x3F, 0xE1, 0x1F]),
            Just(vec![0x3F, 0xE2, 0x1F]),
            Just(vec![0x3F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Just(vec![0xFF; 12]),
            Just(vec![0xBE]),
            Just(vec![0x82, 0x86, 0x84]),
            (0usize..5000, 0usize..12000).prop_map(|(len, refs)| bomb(len, refs)),
            (1usize..300).prop_map(|n| vec![0xBE; n]),
            (0usize..MAX_FRAME).prop_map(|len| {
                let mut b = vec![0x00, 0x01, b'y'];
                loona_hpack::encoder::encode_integer_into(len, 7, 0, &mut b).unwrap();
                b.extend(std::iter::repeat_n(b'w', len));
                b
            }),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|mut v| {
                // A Huffman-coded string of arbitrary bits.
                let mut b = vec![0x00, 0x81, b'z', 0x80 | v.len() as u8];
                b.append(&mut v);
                b
            }),
        ];
        proptest::collection::vec(piece, 0..4).prop_map(|v| v.concat())
    }

    /// Frame sequences: valid, adversarial and garbage frames, interleaved streams.
    fn input_strategy() -> impl Strategy<Value = Vec<u8>> {
        let stream = prop_oneof![Just(0u32), Just(1), Just(3), Just(5), any::<u32>()];
        let flags = any::<u8>();
        let f = prop_oneof![
            4 => (stream.clone(), flags, block_strategy()).prop_map(|(s, fl, mut b)| {
                b.truncate(MAX_FRAME);
                frame(TYPE_HEADERS, fl, s, &b)
            }),
            3 => (stream.clone(), flags, block_strategy()).prop_map(|(s, fl, mut b)| {
                b.truncate(MAX_FRAME);
                frame(TYPE_CONTINUATION, fl, s, &b)
            }),
            1 => (1usize..40, stream.clone()).prop_map(|(n, s)| {
                std::iter::repeat_n(frame(TYPE_CONTINUATION, 0, s, &[0xBE]), n)
                    .flatten()
                    .collect()
            }),
            1 => (any::<u8>(), stream.clone(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(t, s, p)| frame(t % 12, 0, s, &p)),
            1 => (any::<u32>(), any::<u8>()).prop_map(|(len, t)| {
                let mut v = (len & 0xFF_FFFF).to_be_bytes()[1..].to_vec();
                v.extend_from_slice(&[t, 0, 0, 0, 0, 1]);
                v
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..32),
            1 => (0usize..MAX_FRAME + 2).prop_map(|n| frame(0x0, 0, 1, &vec![0u8; n])),
        ];
        (any::<bool>(), proptest::collection::vec(f, 0..12)).prop_map(|(preface, frames)| {
            let mut v = if preface { start() } else { Vec::new() };
            v.extend(frames.concat());
            v
        })
    }

    /// Cases run so far (printed every 250,000, to check long runs).
    static CASES_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn cases() -> u32 {
        std::env::var("RUSD_HPACK_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// No input panics the filter, buffers more than [`BUFFER_BOUND`], or ends other than
        /// with the bytes forwarded and at most one GOAWAY written.
        #[test]
        fn arbitrary_frame_sequences(
            input in input_strategy(),
            chunk in 1usize..40_000,
            read in 1usize..40_000,
        ) {
            let n = CASES_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_multiple_of(250_000) {
                eprintln!("h2fix proptest: {n} cases");
            }
            let r = run(&input, chunk, read);
            prop_assert!(r.max_buffered <= BUFFER_BOUND, "buffered {}", r.max_buffered);
            // Every header block handed to h2 decodes, in order, with a decoder that saw only
            // the filter's output (h2's view): the HPACK states stay consistent.
            if r.forwarded.starts_with(PREFACE) {
                let mut dec = loona_hpack::Decoder::new();
                let mut block = Vec::new();
                for (ty, flags, _, payload) in decode_frames(&r.forwarded[PREFACE.len()..]) {
                    if ty == TYPE_HEADERS || ty == TYPE_CONTINUATION {
                        block.extend_from_slice(&payload);
                        if flags & FLAG_END_HEADERS != 0 {
                            let h = dec.decode(&block);
                            prop_assert!(h.is_ok(), "forwarded block does not decode");
                            block.clear();
                        }
                    }
                }
            }
            match r.violation {
                Some(v) => {
                    prop_assert_eq!(r.written.len(), FRAME_HEADER + 8);
                    prop_assert_eq!(&r.written[..5], &[0, 0, 8, TYPE_GOAWAY, 0][..]);
                    prop_assert_eq!(&r.written[13..], &v.code.to_be_bytes()[..]);
                }
                None => prop_assert!(r.written.is_empty()),
            }
        }
    }
}

//! HTTP/1.1 to a replica, without I/O: request heads out, response heads and bodies (by length,
//! chunked or until close) in (RFC 9112). The connection code in `conn.rs` moves the bytes.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::proxy::headers::{self, Forwarding, X_FORWARDED_FOR};
use http_body::{Frame, SizeHint};
use std::mem::MaybeUninit;

/// Response heads larger than this are refused (hyper's client allows ~400 kB; inference
/// replicas send a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines per response head or trailer section.
const MAX_HEADERS: usize = 128;
/// A replica may send this many 1xx heads before its response; more is a loop.
pub const MAX_INTERIM: u32 = 16;
/// Chunk extension bytes per body (hyper's limit): extensions are ignored, but not unbounded.
const MAX_EXTENSION_BYTES: usize = 16 * 1024;
/// The largest Content-Length taken (hyper's: it keeps the two values above for itself).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid header {0:?} in response")]
    Header(String),
    #[error("invalid Content-Length {0:?} in response")]
    ContentLength(String),
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("malformed trailers: {0}")]
    Trailers(httparse::Error),
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body at all.
    None,
    /// `Content-Length` as the client gave it (or as its body's exact size).
    Length,
    /// `Transfer-Encoding: chunked`: the size is not known up front.
    Chunked,
}

/// Writes the request line and headers. `content_length`, when given, is added as a header the
/// request does not already carry; `Chunked` adds `Transfer-Encoding: chunked`.
pub fn encode_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    content_length: Option<u64>,
    forwarding: Option<&Forwarding<'_>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_head_into(
        &mut out,
        method,
        path_and_query,
        headers,
        framing,
        content_length,
        forwarding,
    );
    out
}

/// [`encode_head`] into `out` (cleared first): a connection reuses one buffer for every
/// request it sends instead of allocating one each time. With `forwarding`, the client's
/// forwarding headers are left out and the proxy's written instead.
pub fn encode_head_into(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    content_length: Option<u64>,
    forwarding: Option<&Forwarding<'_>>,
) {
    out.clear();
    let size = method.as_str().len()
        + path_and_query.len()
        + 64
        + forwarding.map_or(0, |f| {
            128 + f.peer.len() + 2 * f.host.map_or(0, |h| h.len())
        })
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    out.reserve(size);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    let mut has_length = false;
    let mut prior_for = false;
    for (name, value) in headers {
        if forwarding.is_some() && Forwarding::replaces(name) {
            prior_for |= name == X_FORWARDED_FOR;
            continue;
        }
        has_host |= name == header::HOST;
        has_length |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarding {
        f.write(headers, prior_for, has_host, out);
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Length => {
            if let (Some(n), false) = (content_length, has_length) {
                // Formatted in place (writing to a Vec cannot fail).
                let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
            }
        }
        RequestFraming::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Wraps one piece of a chunked request body: size line, data, CRLF.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with the trailers (if any) the client sent.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut out = Vec::new();
    push_last_chunk(&mut out, trailers);
    out
}

/// Appends the last chunk and its trailers (either side: the client server's responses too).
pub fn push_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// HEAD, 204, 304: no body whatever the headers say.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the replica closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The end-to-end headers: hop-by-hop ones (the fixed set and whatever `Connection`
    /// lists) are left out, except in a 101, which passes its `Connection` and `Upgrade` on.
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// The replica lets the connection carry another request after this response.
    pub keep_alive: bool,
    /// The head carried `Transfer-Encoding` (which, being hop-by-hop, is not in `headers`).
    pub transfer_encoding: bool,
    /// The body arrives in pieces over time: the client gets no length for it, or it is an
    /// event stream (SSE). The gaps between its pieces are inter-token latency.
    pub streamed: bool,
}

/// What a look at the read buffer found.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// An interim 1xx response (not 101), already removed from the buffer: skip it.
    Interim,
    Head(Head),
}

/// Per-connection scratch for parsing response heads, kept so that a parse allocates nothing
/// but the header map itself.
#[derive(Debug, Default)]
pub struct HeadScratch {
    /// Header names seen on the connection, by position in the last head, with where their
    /// bytes as sent lie in `raw`: a replica sends the same names in the same order, and a name
    /// that is not one of the standard ones would otherwise be a new allocation in every
    /// response. Compared as sent (a memcmp), not case-folded byte by byte.
    names: Vec<(HeaderName, std::ops::Range<usize>)>,
    raw: Vec<u8>,
    /// Where each header's name and value lie in the head being parsed (start, length, start,
    /// length), so both can be taken from the head once it is frozen.
    spans: Vec<[usize; 4]>,
    /// The names of the head being parsed, in order.
    parsed: Vec<HeaderName>,
    /// Where the names its `Connection` lines list lie in it (but `keep-alive`).
    listed: Vec<std::ops::Range<usize>>,
}

impl HeadScratch {
    /// The name of header `i`, shared with the last head when it had the same bytes there.
    pub(crate) fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, ProtocolError> {
        if let Some((n, r)) = self.names.get(i) {
            if self.raw.get(r.clone()) == Some(raw) {
                return Ok(n.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)
            .map_err(|_| ProtocolError::Header(String::from_utf8_lossy(raw).into_owned()))?;
        if i > self.names.len() || i >= MAX_SEEN_NAMES {
            return Ok(name);
        }
        if self.raw.len() + raw.len() > MAX_SEEN_BYTES {
            // A replica whose names keep changing: start over rather than grow.
            self.names.clear();
            self.raw.clear();
            if i > 0 {
                return Ok(name);
            }
        }
        let start = self.raw.len();
        self.raw.extend_from_slice(raw);
        let entry = (name.clone(), start..self.raw.len());
        if i < self.names.len() {
            self.names[i] = entry;
        } else {
            self.names.push(entry);
        }
        Ok(name)
    }
}

impl HeadScratch {
    /// Where each header's name and value lie in the head being parsed (start, length, start,
    /// length); for the client side's request parser.
    pub(crate) fn spans_mut(&mut self) -> &mut Vec<[usize; 4]> {
        &mut self.spans
    }

    pub(crate) fn spans_len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn span(&self, i: usize) -> [usize; 4] {
        self.spans[i]
    }
}

/// Names remembered per connection (the first of each head), and their bytes at most.
const MAX_SEEN_NAMES: usize = 32;
const MAX_SEEN_BYTES: usize = 2048;

/// Parses a response head off the front of `buf` (consuming it when complete). Header values
/// share `buf`'s memory instead of being copied.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    scratch: &mut HeadScratch,
) -> Result<Parsed, ProtocolError> {
    // Uninitialised slots: zeroing 128 of them (4 KiB) on every response showed up in profiles.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ProtocolError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(ProtocolError::Head(e)),
    };
    let code = res.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Offsets into the head, so names and values can be taken from it once it is frozen.
    let base = buf.as_ptr() as usize;
    scratch.spans.clear();
    for h in res.headers.iter() {
        scratch.spans.push([
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        ]);
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Interim);
    }
    // The framing is read from the head as sent, and hop-by-hop headers never enter the map
    // (RFC 9110 7.6.1): the proxy would otherwise remove them again, a hash and a probe each,
    // and nearly every replica sends `Connection`.
    let n = scratch.spans.len();
    let mut facts = Facts::default();
    scratch.parsed.clear();
    scratch.listed.clear();
    for i in 0..n {
        let [ns, nl, vs, vl] = scratch.spans[i];
        let name = scratch.name(i, &head[ns..ns + nl])?;
        if name == header::CONNECTION {
            for t in headers::connection_tokens(&head[vs..vs + vl]) {
                if t.eq_ignore_ascii_case(b"keep-alive") {
                    // Names the `Keep-Alive` header, dropped anyway.
                    facts.keep_alive = true;
                    continue;
                }
                facts.close |= t.eq_ignore_ascii_case(b"close");
                // A span of `head`: the token is a subslice of it.
                let start = t.as_ptr() as usize - head.as_ptr() as usize;
                scratch.listed.push(start..start + t.len());
            }
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding = Some(i);
        } else if name == header::CONTENT_LENGTH {
            facts.content_length = true;
        } else if name == header::CONTENT_TYPE && !facts.content_type {
            facts.content_type = true;
            facts.event_stream = head[vs..vs + vl].starts_with(b"text/event-stream");
        }
        scratch.parsed.push(name);
    }
    let lengths = || {
        (0..n)
            .filter(|&i| scratch.parsed[i] == header::CONTENT_LENGTH)
            .map(|i| value_bytes(&head, &scratch.spans[i]))
    };
    let last_te = facts
        .transfer_encoding
        .map(|i| value_bytes(&head, &scratch.spans[i]));
    let (framing, mut framing_ok) = framing(status, method, last_te, lengths)?;
    // Transfer-Encoding wins over a Content-Length sent alongside, which must go (RFC 9112
    // 6.3): passing both on would let the client frame the body differently. An HTTP/1.0
    // message with Transfer-Encoding is faulty framing: no reuse after it.
    let drop_length = framing != BodyFraming::Empty && facts.transfer_encoding.is_some();
    if drop_length {
        framing_ok &= version == Version::HTTP_11;
    }
    let keep_alive = framing_ok
        && framing != BodyFraming::UntilClose
        && !facts.close
        && (version == Version::HTTP_11 || facts.keep_alive);
    // A 101 keeps `Connection` and `Upgrade`: the proxy passes the switch on as it came.
    let strip = status != StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = crate::proxy::header_maps::take(n);
    let mut length_kept = false;
    for (i, name) in scratch.parsed.drain(..).enumerate() {
        if strip
            && (headers::is_hop_by_hop(&name)
                || (drop_length && name == header::CONTENT_LENGTH)
                || listed(&head, &scratch.listed, &name))
        {
            continue;
        }
        let [_, _, vs, vl] = scratch.spans[i];
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| ProtocolError::Header(name.to_string()))?;
        length_kept |= name == header::CONTENT_LENGTH;
        headers.append(name, value);
    }
    Ok(Parsed::Head(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
        transfer_encoding: facts.transfer_encoding.is_some(),
        streamed: !length_kept || facts.event_stream,
    }))
}

/// What the framing headers of one head say.
#[derive(Default)]
struct Facts {
    close: bool,
    keep_alive: bool,
    /// Where the last `Transfer-Encoding` line is.
    transfer_encoding: Option<usize>,
    content_length: bool,
    /// A `Content-Type` line was seen; the first one says whether this is an event stream.
    content_type: bool,
    event_stream: bool,
}

fn value_bytes<'h>(head: &'h [u8], span: &[usize; 4]) -> &'h [u8] {
    &head[span[2]..span[2] + span[3]]
}

/// Whether a `Connection` line of the head listed `name`.
fn listed(head: &[u8], listed: &[std::ops::Range<usize>], name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    listed
        .iter()
        .any(|r| r.len() == name.len() && head[r.clone()].eq_ignore_ascii_case(name))
}

/// Parses heads off the front of `buf` until the final (non-1xx, or 101) one, skipping at most
/// [`MAX_INTERIM`] interim heads over the whole response (`interim` counts them across calls).
/// `None`: not a whole final head yet, read more.
pub fn parse_final_head(
    buf: &mut BytesMut,
    method: &Method,
    interim: &mut u32,
    scratch: &mut HeadScratch,
) -> Result<Option<Head>, ProtocolError> {
    while !buf.is_empty() {
        match parse_head(buf, method, scratch)? {
            Parsed::Head(head) => return Ok(Some(head)),
            Parsed::Interim if *interim >= MAX_INTERIM => {
                return Err(ProtocolError::TooManyInterim)
            }
            Parsed::Interim => *interim += 1,
            Parsed::Partial => break,
        }
    }
    Ok(None)
}

/// The body framing, and whether the connection can be reused after it, from the last
/// `Transfer-Encoding` line and the `Content-Length` values.
fn framing<'h, L>(
    status: StatusCode,
    method: &Method,
    last_transfer_encoding: Option<&[u8]>,
    lengths: impl Fn() -> L,
) -> Result<(BodyFraming, bool), ProtocolError>
where
    L: Iterator<Item = &'h [u8]>,
{
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return Ok((BodyFraming::Empty, true));
    }
    let has_length = lengths().next().is_some();
    if let Some(te) = last_transfer_encoding {
        let chunked_last = std::str::from_utf8(te)
            .ok()
            .filter(|_| te.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        // Transfer-Encoding overrides Content-Length, but a response with both may be an
        // attempt at smuggling: use it, then close the connection.
        return Ok(if chunked_last {
            (BodyFraming::Chunked, !has_length)
        } else {
            (BodyFraming::UntilClose, false)
        });
    }
    if !has_length {
        return Ok((BodyFraming::UntilClose, false));
    }
    let length = content_length(lengths())?;
    Ok((BodyFraming::Length(length), true))
}

/// The Content-Length, as hyper's client reads it: every value (and every comma-separated part
/// of one) visible ASCII, digits only between optional spaces and tabs, all equal, and at most
/// [`MAX_CONTENT_LENGTH`].
pub(crate) fn content_length<'h>(
    values: impl Iterator<Item = &'h [u8]>,
) -> Result<u64, ProtocolError> {
    let mut length: Option<u64> = None;
    for bytes in values {
        let invalid = || ProtocolError::ContentLength(String::from_utf8_lossy(bytes).into());
        // `HeaderValue::to_str`'s rule: obs-text is no length, not even around digits.
        if !bytes
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(invalid());
        }
        for part in bytes.split(|b| *b == b',') {
            // Digits only: `u64::from_str` would also take a leading `+`.
            let n = decimal(trim_ows(part)).ok_or_else(invalid)?;
            if length.is_some_and(|l| l != n) || n > MAX_CONTENT_LENGTH {
                return Err(invalid());
            }
            length = Some(n);
        }
    }
    length.ok_or(ProtocolError::ContentLength(String::new()))
}

/// A non-empty run of decimal digits that fits a `u64`.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Drops spaces and tabs (optional whitespace) at both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What the chunked decoder produced.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// More bytes are needed.
    NeedMore,
    Data(Bytes),
    /// The last chunk and its trailers (if the body had a trailer section): the body is
    /// complete.
    End(Option<HeaderMap>),
}

/// Where a [`ChunkedDecoder`] is in the body. These are the states of hyper's client decoder
/// (`proto/h1/decode.rs`), so that both accept and refuse the same bytes: CRLF everywhere (a
/// bare LF is refused), whitespace only after the size digits, extensions up to CR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkedState {
    /// A chunk size starts: a hex digit must come.
    #[default]
    Start,
    /// In the size: more hex digits, then spaces or tabs, `;` or CR.
    Size,
    /// Whitespace after the size: more of it, `;` or CR.
    SizeLws,
    /// In chunk extensions, which are ignored: anything but LF, up to CR.
    Extension,
    /// The size line's CR was seen: LF must follow.
    SizeLf,
    /// In chunk data: `size` bytes left.
    Data,
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk's size line, and after each trailer line: CR ends the body,
    /// anything else starts a trailer line.
    EndCr,
    /// In a trailer line, up to CR.
    Trailer,
    TrailerLf,
    /// The final CR was seen: LF must follow.
    EndLf,
    /// The body is complete.
    End,
}

/// Incremental decoder of a chunked body (RFC 9112 section 7.1), byte-compatible with hyper's
/// client. Chunk data is handed on without copying; only trailers are collected.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkedState,
    /// The size being read, then the bytes left of the chunk's data.
    size: u64,
    /// Extension bytes seen in the whole body.
    extension_bytes: usize,
    /// The trailer section as received (lines with their CRLF), once one started.
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

fn chunked(what: &'static str) -> ProtocolError {
    ProtocolError::Chunked(what)
}

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, consuming what it uses. Bytes after the body stay.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, ProtocolError> {
        use ChunkedState::*;
        loop {
            match self.state {
                Data if buf.is_empty() => return Ok(Chunk::NeedMore),
                Data => {
                    let n = self.size.min(buf.len() as u64);
                    self.size -= n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    return Ok(Chunk::Data(buf.split_to(n as usize).freeze()));
                }
                // The trailers go with the first `End`; any later call gets none.
                End => return self.end(),
                // The usual shapes in one step: a size line that is only hex digits and CRLF,
                // and the CRLF after data. Anything else goes the byte-at-a-time way below,
                // which accepts and refuses the same bytes.
                Start => {
                    let digits = buf
                        .iter()
                        .take(16)
                        .take_while(|b| b.is_ascii_hexdigit())
                        .count();
                    if (1..16).contains(&digits) && buf.get(digits..digits + 2) == Some(b"\r\n") {
                        let size = buf[..digits]
                            .iter()
                            .fold(0u64, |n, &b| n << 4 | hex_digit(b).unwrap_or(0));
                        buf.advance(digits + 2);
                        self.size = size;
                        self.state = if size == 0 { EndCr } else { Data };
                        continue;
                    }
                }
                DataCr if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    self.state = Start;
                    continue;
                }
                _ => {}
            }
            // Everything else goes a byte at a time: size lines, CRLFs and trailers are short.
            let Some(&b) = buf.first() else {
                return Ok(Chunk::NeedMore);
            };
            let next = match (self.state, b) {
                (Start, _) => {
                    self.size = hex_digit(b).ok_or(chunked("chunk size is not hex"))?;
                    Size
                }
                (Size, b' ' | b'\t') | (SizeLws, b' ' | b'\t') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws | Extension, b'\r') => SizeLf,
                (Size | SizeLws, b'\n') => {
                    return Err(chunked("chunk size line ends in a bare LF"))
                }
                (Size, _) => {
                    let digit = hex_digit(b).ok_or(chunked("chunk size is not hex"))?;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or(chunked("chunk size overflows"))?;
                    Size
                }
                (SizeLws, _) => return Err(chunked("chunk size followed by whitespace and more")),
                (Extension, b'\n') => return Err(chunked("chunk extension ends in a bare LF")),
                (Extension, _) => {
                    self.extension_bytes += 1;
                    if self.extension_bytes >= MAX_EXTENSION_BYTES {
                        return Err(chunked("chunk extensions too long"));
                    }
                    Extension
                }
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Data,
                (SizeLf, _) => return Err(chunked("chunk size line not ended by CRLF")),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (DataCr | DataLf, _) => return Err(chunked("chunk data not followed by CRLF")),
                (EndCr, b'\r') => {
                    self.push_trailer_byte(b, false)?;
                    EndLf
                }
                (EndCr, _) => {
                    self.push_trailer_byte(b, true)?;
                    Trailer
                }
                (Trailer, b'\r') => {
                    self.push_trailer_byte(b, true)?;
                    TrailerLf
                }
                (Trailer, _) => {
                    self.push_trailer_byte(b, true)?;
                    Trailer
                }
                (TrailerLf, b'\n') => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(chunked("too many trailer lines"));
                    }
                    self.trailer_lines += 1;
                    self.push_trailer_byte(b, true)?;
                    EndCr
                }
                (TrailerLf, _) => return Err(chunked("trailer line not ended by CRLF")),
                (EndLf, b'\n') => {
                    self.push_trailer_byte(b, false)?;
                    End
                }
                (EndLf, _) => return Err(chunked("chunked body not ended by CRLF")),
                // Handled above, without taking a byte.
                (Data | End, _) => continue,
            };
            buf.advance(1);
            self.state = next;
        }
    }

    /// Adds a byte to the trailer section; `start` begins one if there is none yet.
    fn push_trailer_byte(&mut self, b: u8, start: bool) -> Result<(), ProtocolError> {
        let section = match (&mut self.trailers, start) {
            (Some(section), _) => section,
            (None, true) => self.trailers.insert(BytesMut::with_capacity(64)),
            (None, false) => return Ok(()),
        };
        section.extend_from_slice(&[b]);
        if section.len() >= MAX_HEAD {
            return Err(chunked("trailer section too large"));
        }
        Ok(())
    }

    /// The body ended: its trailers, parsed as hyper does (one field per CRLF-ended line).
    fn end(&mut self) -> Result<Chunk, ProtocolError> {
        let Some(section) = self.trailers.take() else {
            return Ok(Chunk::End(None));
        };
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let slots = &mut slots[..self.trailer_lines.min(MAX_HEADERS)];
        match httparse::parse_headers(&section, slots) {
            Ok(httparse::Status::Complete((_, parsed))) => {
                let mut trailers = HeaderMap::with_capacity(parsed.len());
                for h in parsed.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| ProtocolError::Header(h.name.to_owned()))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| ProtocolError::Header(h.name.to_owned()))?;
                    trailers.append(name, value);
                }
                Ok(Chunk::End(Some(trailers)))
            }
            Ok(httparse::Status::Partial) => Err(chunked("trailer section incomplete")),
            Err(e) => Err(ProtocolError::Trailers(e)),
        }
    }
}

/// The value of a hex digit.
fn hex_digit(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// A response body as its framing delimits it, decoded from bytes already read (no I/O).
#[derive(Debug)]
pub enum BodyDecoder {
    /// Bytes left of a Content-Length body (never 0: that is `Done`).
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Everything until the replica closes the connection.
    UntilClose,
    /// The body ended, or there was none.
    Done,
}

/// What a [`BodyDecoder`] produced.
#[derive(Debug)]
pub enum Decoded {
    /// A piece of data, or the trailers (which end the body).
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete.
    End,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => BodyDecoder::Done,
            BodyFraming::Length(n) => BodyDecoder::Length(n),
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => BodyDecoder::UntilClose,
        }
    }

    /// Takes the next piece of the body off the front of `buf`; bytes after the body stay.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        let frame = match self {
            BodyDecoder::Done => return Ok(Decoded::End),
            _ if buf.is_empty() => return Ok(Decoded::NeedMore),
            BodyDecoder::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = BodyDecoder::Done;
                }
                Frame::data(buf.split_to(n as usize).freeze())
            }
            BodyDecoder::UntilClose => Frame::data(buf.split().freeze()),
            BodyDecoder::Chunked(decoder) => match decoder.decode(buf)? {
                Chunk::NeedMore => return Ok(Decoded::NeedMore),
                Chunk::Data(data) => Frame::data(data),
                Chunk::End(trailers) => {
                    *self = BodyDecoder::Done;
                    match trailers {
                        Some(t) => Frame::trailers(t),
                        None => return Ok(Decoded::End),
                    }
                }
            },
        };
        Ok(Decoded::Frame(frame))
    }

    /// The replica closed the connection: true when that ends the body (it ended already, or
    /// it is delimited by the close), false when the body was cut short.
    pub fn close(&mut self) -> bool {
        let ended = matches!(self, BodyDecoder::Done | BodyDecoder::UntilClose);
        if ended {
            *self = BodyDecoder::Done;
        }
        ended
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            BodyDecoder::Length(n) => SizeHint::with_exact(*n),
            BodyDecoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_reused_across_heads_on_a_connection() {
        let mut seen = HeadScratch::default();
        let mut head = |text: &str| {
            let mut buf = BytesMut::from(text);
            match parse_head(&mut buf, &Method::GET, &mut seen).unwrap() {
                Parsed::Head(h) => h.headers,
                _ => panic!("not a head"),
            }
        };
        let first = head("HTTP/1.1 200 OK\r\nX-Replica-Version: v1\r\ncontent-length: 0\r\n\r\n");
        let second = head("HTTP/1.1 200 OK\r\nX-Replica-Version: v2\r\ncontent-length: 0\r\n\r\n");
        let ptr = |h: &HeaderMap| h.keys().next().unwrap().as_str().as_ptr();
        assert_eq!(
            ptr(&first),
            ptr(&second),
            "the custom name is shared, not allocated again"
        );
        assert_eq!(second["x-replica-version"], "v2");
        // Another order: names still match what was sent.
        let third = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-other: 1\r\nx-replica-version: v3\r\n\r\n",
        );
        let names: Vec<&str> = third.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-other", "x-replica-version"]);
        assert_eq!(third["x-replica-version"], "v3");
        // A name that is not a valid header name is still refused.
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nx-replica-version: v1\r\n\r\n");
        let _ = parse_head(&mut buf, &Method::GET, &mut seen);
        let mut bad = BytesMut::from("HTTP/1.1 200 OK\r\nx-repl\x01ca-version: v1\r\n\r\n");
        assert!(parse_head(&mut bad, &Method::GET, &mut seen).is_err());
    }

    fn head(bytes: &[u8], method: Method) -> Result<Parsed, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, &method, &mut HeadScratch::default())
    }

    fn must_head(bytes: &[u8], method: Method) -> Head {
        match head(bytes, method) {
            Ok(Parsed::Head(h)) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn request_heads_carry_the_framing_the_body_needs() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("m.local"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let get = encode_head(
            &Method::GET,
            "/v1?q=1",
            &h,
            RequestFraming::None,
            None,
            None,
        );
        assert_eq!(
            String::from_utf8(get).unwrap(),
            "GET /v1?q=1 HTTP/1.1\r\nhost: m.local\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        let post = |h: &HeaderMap| {
            let head = encode_head(
                &Method::POST,
                "/",
                h,
                RequestFraming::Length,
                Some(12),
                None,
            );
            String::from_utf8(head).unwrap()
        };
        assert!(post(&h).ends_with("x-a: 2\r\ncontent-length: 12\r\n\r\n"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let post = post(&h);
        assert_eq!(post.matches("content-length").count(), 1, "{post}");
        h.remove(header::CONTENT_LENGTH);
        let chunked = encode_head(&Method::POST, "/", &h, RequestFraming::Chunked, None, None);
        assert!(String::from_utf8(chunked)
            .unwrap()
            .ends_with("transfer-encoding: chunked\r\n\r\n"));
        let mut c = Vec::new();
        encode_chunk(b"hello world, this is seventeen+", &mut c);
        assert_eq!(c, b"1f\r\nhello world, this is seventeen+\r\n");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(encode_last_chunk(Some(&t)), b"0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(encode_last_chunk(None), b"0\r\n\r\n");
    }

    #[test]
    fn response_heads_parse_with_their_framing() {
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
            Method::GET,
        );
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);

        let h = must_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.keep_alive);

        let h = must_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(
            !h.keep_alive,
            "a body delimited by close cannot be followed by another response"
        );

        for (resp, method) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..],
                Method::HEAD,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
            ),
        ] {
            let h = must_head(resp, method);
            assert_eq!(h.framing, BodyFraming::Empty);
            assert!(h.keep_alive);
        }
    }

    #[test]
    fn a_body_without_a_length_or_an_event_stream_counts_as_streamed() {
        let streamed = |wire: &[u8]| must_head(wire, Method::GET).streamed;
        assert!(!streamed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"));
        assert!(streamed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(streamed(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n"
        ));
        // The length the client would get is gone: Transfer-Encoding came with it.
        assert!(streamed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        // The first Content-Type decides, as a header lookup would.
        assert!(!streamed(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Content-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn hop_by_hop_headers_stay_out_of_the_head_except_in_a_101() {
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
              connection: X-Other\r\nx-other: 2\r\nX-Kept: 3\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
        assert!(h.keep_alive, "the dropped Connection line still counts");
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(h.headers.get(header::CONNECTION).is_none());
        assert!(!h.keep_alive);
        // A line that is not visible ASCII lists nothing, as `HeaderValue::to_str` reads it.
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nConnection: x-a, \xff\r\nx-a: 1\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.headers["x-a"], "1");
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
            Method::GET,
        );
        assert!(h.transfer_encoding);
        assert!(!h.headers.contains_key(header::TRANSFER_ENCODING));
        let h = must_head(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.headers["connection"], "Upgrade");
        assert_eq!(h.headers["upgrade"], "websocket");
    }

    #[test]
    fn connection_reuse_follows_version_and_connection_header() {
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(!h.keep_alive);
        let h = must_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET);
        assert!(!h.keep_alive);
        assert_eq!(h.version, Version::HTTP_10);
        let h = must_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(h.keep_alive);
        // Both framings: chunked wins, and the connection is not trusted again.
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
    }

    #[test]
    fn lengths_are_digits_only_and_transfer_encoding_drops_content_length() {
        assert!(matches!(
            head(
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                Method::GET
            ),
            Err(ProtocolError::ContentLength(_))
        ));
        assert!(decode_in_steps(b"+5\r\nhello\r\n0\r\n\r\n", 100).is_err());
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = must_head(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(
            !h.keep_alive,
            "HTTP/1.0 with Transfer-Encoding is faulty framing"
        );
    }

    #[test]
    fn partial_interim_and_bad_heads() {
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET),
            Ok(Parsed::Partial)
        ));
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, &Method::POST, &mut HeadScratch::default()),
            Ok(Parsed::Interim)
        ));
        assert!(
            matches!(parse_head(&mut buf, &Method::POST, &mut HeadScratch::default()), Ok(Parsed::Head(h)) if h.status == 200)
        );
        assert!(buf.is_empty());
        assert!(matches!(
            head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                Method::GET
            ),
            Err(ProtocolError::ContentLength(_))
        ));
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            must_head(twice, Method::GET).framing,
            BodyFraming::Length(5)
        );
        assert!(matches!(
            head(b"HTTP/1.1 2x0 OK\r\n\r\n", Method::GET),
            Err(ProtocolError::Head(_))
        ));
        assert!(matches!(
            head(b"SSH-2.0-OpenSSH\r\n\r\n", Method::GET),
            Err(ProtocolError::Head(_))
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            head(&big, Method::GET).unwrap_err(),
            ProtocolError::HeadTooLarge
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            head(&many, Method::GET).unwrap_err(),
            ProtocolError::Head(httparse::Error::TooManyHeaders)
        );
    }

    /// What [`decode_in_steps`] answers when the decoder wants more than the whole body.
    const INCOMPLETE: ProtocolError = ProtocolError::Chunked("test: the body never ended");

    /// Feeds `wire` to a decoder `step` bytes at a time; returns the data and trailers.
    fn decode_in_steps(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), ProtocolError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Chunk::Data(b) => data.extend_from_slice(&b),
                Chunk::End(t) => return Ok((data, t, buf.len())),
                Chunk::NeedMore if fed == wire.len() => return Err(INCOMPLETE),
                Chunk::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nB\r\nworld again\r\n0\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, trailers, left) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"hello world again", "step {step}");
            assert!(trailers.is_none());
            // Bytes after the body stay in the buffer: they belong to no response.
            assert!(left <= 4, "step {step}");
            if step == 100 {
                assert_eq!(left, 4);
            }
        }
    }

    #[test]
    fn chunked_trailers_and_errors() {
        let wire = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: done\r\n\r\n";
        for step in [1, 5, 100] {
            let (data, trailers, _) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"abc");
            let t = trailers.unwrap();
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-t"], "done");
        }
        assert!(decode_in_steps(b"zz\r\nabc\r\n0\r\n\r\n", 100).is_err());
        assert!(decode_in_steps(b"3\r\nabcX\r\n0\r\n\r\n", 100).is_err());
        assert!(decode_in_steps(b"fffffffffffffffff\r\n", 100).is_err());
    }

    // Regression tests for what the differential test against hyper's client
    // (`differential.rs`) found the codec accepting or refusing where hyper does the opposite.
    // Each decodes a whole body in one piece and a byte at a time.

    /// Decodes `wire` as a chunked body, whole and a byte at a time; both must agree.
    fn chunked_body(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
        let whole = decode_in_steps(wire, wire.len().max(1)).map(|(d, t, _)| (d, t));
        let bytewise = decode_in_steps(wire, 1).map(|(d, t, _)| (d, t));
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(wire));
        whole
    }

    #[test]
    fn a_chunk_size_line_ending_in_a_bare_lf_is_refused() {
        let bare_lf = Err(ProtocolError::Chunked("chunk size line ends in a bare LF"));
        assert_eq!(chunked_body(b"5\nhello\r\n0\r\n\r\n"), bare_lf);
        assert_eq!(chunked_body(b"5 \nhello\r\n0\r\n\r\n"), bare_lf);
        assert_eq!(chunked_body(b"0\n\r\n"), bare_lf);
        assert_eq!(
            chunked_body(b"5;name=value\nhello\r\n0\r\n\r\n"),
            Err(ProtocolError::Chunked("chunk extension ends in a bare LF"))
        );
        assert_eq!(
            chunked_body(b"5\r\nhello\n0\r\n\r\n"),
            Err(ProtocolError::Chunked("chunk data not followed by CRLF"))
        );
    }

    #[test]
    fn a_lone_cr_in_a_chunk_size_line_is_refused() {
        let not_crlf = Err(ProtocolError::Chunked("chunk size line not ended by CRLF"));
        assert_eq!(chunked_body(b"5;x\ry\r\nhello\r\n0\r\n\r\n"), not_crlf);
        assert_eq!(chunked_body(b"5\r\r\nhello\r\n0\r\n\r\n"), not_crlf);
        assert_eq!(chunked_body(b"0;name\r \n\r\n"), not_crlf);
    }

    #[test]
    fn whitespace_may_follow_a_chunk_size_but_not_precede_or_split_it() {
        assert_eq!(
            chunked_body(b"5 \t ;ext\r\nhello\r\n0\t\r\n\r\n").unwrap(),
            (b"hello".to_vec(), None)
        );
        assert_eq!(
            chunked_body(b" 5\r\nhello\r\n0\r\n\r\n"),
            Err(ProtocolError::Chunked("chunk size is not hex"))
        );
        assert_eq!(
            chunked_body(b"5 5\r\nhello\r\n0\r\n\r\n"),
            Err(ProtocolError::Chunked(
                "chunk size followed by whitespace and more"
            ))
        );
    }

    #[test]
    fn chunk_sizes_may_carry_any_number_of_leading_zeros_but_not_overflow() {
        assert_eq!(
            chunked_body(b"000000000000000000005\r\nhello\r\n00000000000000000000\r\n\r\n")
                .unwrap(),
            (b"hello".to_vec(), None)
        );
        let overflow = Err(ProtocolError::Chunked("chunk size overflows"));
        assert_eq!(chunked_body(b"10000000000000000\r\n"), overflow);
        assert_eq!(chunked_body(b"fffffffffffffffff\r\n"), overflow);
        // The largest size is a size: the body then ends too early.
        assert_eq!(chunked_body(b"ffffffffffffffff\r\nabc"), Err(INCOMPLETE));
    }

    #[test]
    fn chunk_extensions_are_limited_per_body_not_per_line() {
        // One 10 kB extension is fine (the old 4 kB line limit refused it; hyper takes it)...
        let mut wire = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(10_000));
        assert_eq!(chunked_body(wire.as_bytes()).unwrap().0, b"hello");
        // ...but 16 KiB of them in one body is not.
        wire = format!("1;{}\r\na\r\n", "e".repeat(9_000)).repeat(2) + "0\r\n\r\n";
        assert_eq!(
            chunked_body(wire.as_bytes()),
            Err(ProtocolError::Chunked("chunk extensions too long"))
        );
    }

    #[test]
    fn trailer_lines_and_the_end_of_a_chunked_body_need_crlf() {
        // A bare LF inside the trailer section: hyper counts fields by CRLF, so two fields on
        // one CRLF line are one field too many.
        assert_eq!(
            chunked_body(b"0\r\nx-a: 1\nx-b: 2\r\n\r\n"),
            Err(ProtocolError::Trailers(httparse::Error::TooManyHeaders))
        );
        assert_eq!(
            chunked_body(b"0\r\nx-a: 1\rx\r\n\r\n"),
            Err(ProtocolError::Chunked("trailer line not ended by CRLF"))
        );
        // The empty line ending the body must be CRLF: a bare LF starts a trailer line.
        assert_eq!(chunked_body(b"0\r\n\n"), Err(INCOMPLETE));
        assert_eq!(chunked_body(b"0\r\nx-a: 1\r\n\n"), Err(INCOMPLETE));
        assert_eq!(
            chunked_body(b"0\r\n\rx"),
            Err(ProtocolError::Chunked("chunked body not ended by CRLF"))
        );
        let (_, trailers) = chunked_body(b"0\r\nx-a: 1\r\nx-b: 2\r\n\r\n").unwrap();
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-a"], "1");
        assert_eq!(trailers["x-b"], "2");
    }

    #[test]
    fn content_length_with_non_ascii_whitespace_is_refused() {
        // U+00A0 is whitespace to `str::trim`, but not a digit or optional whitespace.
        for value in ["5\u{a0}", "\u{a0}5", "5, \u{a0}5"] {
            let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nhello");
            assert!(
                matches!(
                    head(wire.as_bytes(), Method::GET),
                    Err(ProtocolError::ContentLength(_))
                ),
                "{value:?}"
            );
        }
        let h = must_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: \t5 , 5\t\r\n\r\nhello",
            Method::GET,
        );
        assert_eq!(h.framing, BodyFraming::Length(5));
    }

    #[test]
    fn content_length_above_hypers_maximum_is_refused() {
        let max = must_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551613\r\n\r\n",
            Method::GET,
        );
        assert_eq!(max.framing, BodyFraming::Length(u64::MAX - 2));
        for too_big in [
            "18446744073709551614",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {too_big}\r\n\r\n");
            assert!(
                matches!(
                    head(wire.as_bytes(), Method::GET),
                    Err(ProtocolError::ContentLength(_))
                ),
                "{too_big}"
            );
        }
    }
}

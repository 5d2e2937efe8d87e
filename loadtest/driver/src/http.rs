//! The client side of HTTP/1.1 that the driver needs, and no more: writing
//! body-less requests and cutting pipelined responses out of a read buffer.
//! Parsing is httparse; bodies are framed by `Content-Length` or chunked
//! encoding (the server sends the former; the latter is read for safety).

use std::fmt;

/// Most response headers we accept; the server sends a handful.
const MAX_HEADERS: usize = 32;

/// Appends a request without a body to `out`.
pub fn write_request(out: &mut Vec<u8>, method: &str, path: &str, host: &str, auth: &str) {
    for part in [method, " ", path, " HTTP/1.1\r\nHost: ", host, "\r\nAuthorization: ", auth] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
}

/// One complete response at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the buffer this response occupies (head and body).
    pub len: usize,
    /// The body, where it sits in the buffer (`Content-Length` framing), or
    /// `None` for a chunked body (the driver never needs one).
    pub body: Option<std::ops::Range<usize>>,
}

/// The server's answer could not be read as HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad response: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Cuts the first response out of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError(e.to_string())),
    };
    let status = res.code.unwrap_or(0);
    let mut content_length = None;
    let mut chunked = false;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| ParseError("content-length".into()))?;
            let n: usize = text.trim().parse().map_err(|_| ParseError(format!("content-length {text:?}")))?;
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(Response { status, len: head, body: Some(head..head) }));
    }
    if chunked {
        return Ok(chunked_len(&buf[head..])?.map(|n| Response { status, len: head + n, body: None }));
    }
    let Some(n) = content_length else {
        return Err(ParseError(format!("status {status} without content-length or chunked framing")));
    };
    if buf.len() < head + n {
        return Ok(None);
    }
    Ok(Some(Response { status, len: head + n, body: Some(head..head + n) }))
}

/// Length of a complete chunked body (with its trailer) at the front of `buf`.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut at = 0;
    loop {
        let (skip, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ParseError("chunk size".into())),
        };
        at += skip;
        if size == 0 {
            // Trailer fields (none expected), then the final CRLF.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ParseError("chunk size".into()))?;
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// A buffer of received bytes from which complete responses are consumed.
#[derive(Default)]
pub struct ReadBuf {
    pub data: Vec<u8>,
    pub start: usize,
}

impl ReadBuf {
    pub fn with_capacity(n: usize) -> ReadBuf {
        ReadBuf { data: Vec::with_capacity(n), start: 0 }
    }

    /// The next complete response, if any, without consuming it.
    pub fn peek(&self) -> Result<Option<Response>, ParseError> {
        parse_response(&self.data[self.start..])
    }

    /// The unconsumed bytes.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Drops consumed bytes so that the next read appends after the rest.
    pub fn compact(&mut self) {
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        } else if self.start > 0 && self.start * 2 >= self.data.capacity() {
            self.data.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_well_formed() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", "/v1/users/u1/sessions", "127.0.0.1:8080", "Bearer g1.x.y");
        assert_eq!(
            out,
            b"POST /v1/users/u1/sessions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer g1.x.y\r\n\
              Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn pipelined_responses_are_cut_in_order() {
        let one = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let two = b"HTTP/1.1 410 Gone\r\nContent-Length: 5\r\n\r\nabcde";
        let mut buf = one.to_vec();
        buf.extend_from_slice(two);
        buf.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 20");
        let a = parse_response(&buf).unwrap().unwrap();
        assert_eq!((a.status, a.len), (200, one.len()));
        assert_eq!(&buf[a.body.clone().unwrap()], b"{}");
        let b = parse_response(&buf[a.len..]).unwrap().unwrap();
        assert_eq!((b.status, b.len), (410, two.len()));
        let c = parse_response(&buf[a.len + b.len..]).unwrap().unwrap();
        assert_eq!(c.status, 204);
        assert_eq!(parse_response(&buf[a.len + b.len + c.len..]).unwrap(), None);
    }

    #[test]
    fn partial_body_waits_for_more() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a\"").unwrap(), None);
    }

    #[test]
    fn chunked_bodies_are_framed() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nNEXT";
        let p = parse_response(r).unwrap().unwrap();
        assert_eq!(&r[p.len..], b"NEXT");
        assert_eq!(parse_response(&r[..r.len() - 6]).unwrap(), None);
    }

    #[test]
    fn unframed_and_garbage_responses_are_errors() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn read_buf_compacts() {
        let mut b = ReadBuf::with_capacity(8);
        b.data.extend_from_slice(b"abcdefgh");
        b.consume(8);
        b.compact();
        assert!(b.data.is_empty() && b.start == 0);
        b.data.extend_from_slice(b"abcdefgh");
        b.consume(6);
        b.compact();
        assert_eq!(b.pending(), b"gh");
    }
}

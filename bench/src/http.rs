//! A minimal blocking HTTP/1.1 client for the control port: one keep-alive connection,
//! `Content-Length` or chunked bodies, a reconnect when the server closed an idle
//! connection. It speaks only to queue-server's control API (a trusted local peer), so
//! it reads exactly what that server sends and nothing more general.
//!
//! Invariants:
//! - one request in flight at a time; a response is read whole before the next request;
//! - a request that failed because the kept-alive connection had gone is retried once
//!   on a fresh connection, never more.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a control call failed.
#[derive(Debug)]
pub enum HttpError {
    /// Could not connect, write or read.
    Io {
        /// The control address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The answer is not HTTP/1.1 as expected.
    Malformed(String),
    /// The server answered with a non-2xx status.
    Status {
        /// The status code.
        status: u16,
        /// The body (the API's `{"error": ...}`).
        body: String,
    },
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Io { addr, source } => write!(f, "control port {addr}: {source}"),
            HttpError::Malformed(why) => write!(f, "control port answer: {why}"),
            HttpError::Status { status, body } => write!(f, "control port said {status}: {body}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A client of the control port.
pub struct Control {
    /// Where the control API listens.
    pub addr: SocketAddr,
    /// `Authorization: Bearer` key, if the server needs one.
    bearer: Option<String>,
    /// The kept-alive connection, if any.
    conn: Option<BufReader<TcpStream>>,
}

impl Control {
    /// A client of `addr` (connects on first use).
    pub fn new(addr: SocketAddr, bearer: Option<String>) -> Control {
        Control {
            addr,
            bearer,
            conn: None,
        }
    }

    /// `GET path`; the body on 2xx.
    pub fn get(&mut self, path: &str) -> Result<String, HttpError> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body; the body on 2xx.
    pub fn post(&mut self, path: &str, body: &str) -> Result<String, HttpError> {
        self.call("POST", path, Some(body))
    }

    /// `PUT path` with a JSON body; the body on 2xx.
    pub fn put(&mut self, path: &str, body: &str) -> Result<String, HttpError> {
        self.call("PUT", path, Some(body))
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<String, HttpError> {
        let (status, text) = match self.once(method, path, body) {
            Ok(r) => r,
            Err(HttpError::Io { .. }) if self.conn.is_none() => {
                // A kept-alive connection the server had closed: one fresh try.
                self.once(method, path, body)?
            }
            Err(e) => return Err(e),
        };
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(HttpError::Status { status, body: text })
        }
    }

    fn io(&self, source: std::io::Error) -> HttpError {
        HttpError::Io {
            addr: self.addr,
            source,
        }
    }

    fn once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), HttpError> {
        let fresh = self.conn.is_none();
        if fresh {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| self.io(e))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| self.io(e))?;
            s.set_nodelay(true).map_err(|e| self.io(e))?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.exchange(method, path, body);
        if result.is_err() {
            // Never reuse a connection in an unknown state; a stale one is retried once.
            self.conn = None;
            if let (false, Err(HttpError::Io { .. })) = (fresh, &result) {
                return self.once(method, path, body);
            }
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), HttpError> {
        let addr = self.addr;
        let io = |source| HttpError::Io { addr, source };
        let auth = self
            .bearer
            .as_ref()
            .map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: queue-bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let conn = self.conn.as_mut().expect("connected");
        conn.get_mut().write_all(req.as_bytes()).map_err(io)?;
        let head = read_head(conn).map_err(|e| e.at(addr))?;
        let out = read_body(conn, &head).map_err(|e| e.at(addr))?;
        if head.close || (!head.chunked && head.length.is_none()) {
            self.conn = None;
        }
        let text =
            String::from_utf8(out).map_err(|_| HttpError::Malformed("body is not UTF-8".into()))?;
        Ok((head.status, text))
    }
}

/// What the status line and headers of an answer say.
struct Head {
    /// Status code.
    status: u16,
    /// `Content-Length`, when given.
    length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    chunked: bool,
    /// `Connection: close`.
    close: bool,
}

/// A read failure before the caller knows the address.
enum ReadError {
    /// The socket failed.
    Io(std::io::Error),
    /// The answer is not HTTP/1.1 as expected.
    Malformed(String),
}

impl ReadError {
    /// The caller's error, naming the server.
    fn at(self, addr: std::net::SocketAddr) -> HttpError {
        match self {
            ReadError::Io(source) => HttpError::Io { addr, source },
            ReadError::Malformed(m) => HttpError::Malformed(m),
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads the status line and the headers.
fn read_head(conn: &mut impl BufRead) -> Result<Head, ReadError> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ReadError::Malformed(format!("status line {line:?}")))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        close: false,
    };
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(ReadError::Malformed("headers cut short".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse::<usize>().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

/// Reads the body the head announced (chunked, sized, or up to the close).
fn read_body(conn: &mut impl BufRead, head: &Head) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    if head.chunked {
        let mut line = String::new();
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| ReadError::Malformed(format!("chunk size {line:?}")))?;
            let mut chunk = vec![0u8; n + 2];
            conn.read_exact(&mut chunk)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = head.length {
        out.resize(n, 0);
        conn.read_exact(&mut out)?;
    } else {
        conn.read_to_end(&mut out)?;
    }
    Ok(out)
}

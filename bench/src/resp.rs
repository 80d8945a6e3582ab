//! A minimal RESP2 client over a blocking `TcpStream`: enough to pipeline
//! pre-encoded commands and check every reply. std only, so the bench builds
//! in seconds and no client library sits between us and the server.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (status or bulk), for INFO and SCRIPT LOAD.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(b) | Reply::Bulk(Some(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        }
    }

    /// A short printable form, for error messages.
    pub fn show(&self) -> String {
        match self {
            Reply::Status(b) => format!("+{}", String::from_utf8_lossy(b)),
            Reply::Error(b) => format!("-{}", String::from_utf8_lossy(b)),
            Reply::Int(i) => format!(":{i}"),
            Reply::Bulk(None) => "(nil)".into(),
            Reply::Bulk(Some(b)) => format!("${:?}", String::from_utf8_lossy(b)),
            Reply::Array(None) => "*(nil)".into(),
            Reply::Array(Some(v)) => format!("*[{} items]", v.len()),
        }
    }
}

/// Appends the RESP encoding of one command to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A connection to one server.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn connect(port: u16) -> io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(1 << 16, s.try_clone()?),
            writer: s,
        })
    }

    /// The socket's file descriptor (for `poll`).
    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.writer.as_raw_fd()
    }

    /// Whether a reply (or part of one) is already buffered.
    pub fn buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// Sends raw, already-encoded bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// One command, one reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut buf = Vec::new();
        encode(args, &mut buf);
        self.send(&buf)?;
        self.read()
    }

    /// Like [`cmd`](Self::cmd) with `&str` arguments; an error reply is an `Err`.
    pub fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        match self.cmd(&a) {
            Ok(Reply::Error(e)) => Err(format!("{args:?}: {}", String::from_utf8_lossy(&e))),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("{args:?}: {e}")),
        }
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut l = Vec::with_capacity(32);
        self.reader.read_until(b'\n', &mut l)?;
        if l.len() < 2 || l[l.len() - 2] != b'\r' {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    fn int(b: &[u8]) -> io::Result<i64> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad integer"))
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<Reply> {
        let l = self.line()?;
        let (kind, rest) = l
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty line"))?;
        Ok(match kind {
            b'+' => Reply::Status(rest.to_vec()),
            b'-' => Reply::Error(rest.to_vec()),
            b':' => Reply::Int(Self::int(rest)?),
            b'$' => {
                let n = Self::int(rest)?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            b'*' => {
                let n = Self::int(rest)?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.read()?);
                    }
                    Reply::Array(Some(v))
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected reply type {:?}", *kind as char),
                ))
            }
        })
    }
}

//! The load generator: N pre-encoded commands split over `conns`
//! connections, each sending batches of `depth` commands and reading the
//! batch's replies before sending the next (closed loop, fixed concurrency and
//! pipeline depth). Every reply is checked against the expectation, so a
//! workload that claims "RELEASE of held keys" fails loudly if one release
//! missed.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::resp::{encode, Conn, Reply};

/// What every reply of a workload must be.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `+OK`
    Ok,
    /// `+PONG`
    Pong,
    /// `:n`
    Int(i64),
    /// A positive integer (a fencing token).
    Token,
    /// A bulk string equal to this.
    Bulk(Vec<u8>),
    /// Any non-nil bulk string.
    AnyBulk,
}

impl Expect {
    pub fn check(&self, r: &Reply) -> bool {
        match (self, r) {
            (Expect::Ok, Reply::Status(s)) => s == b"OK",
            (Expect::Pong, Reply::Status(s)) => s == b"PONG",
            (Expect::Int(n), Reply::Int(i)) => n == i,
            (Expect::Token, Reply::Int(i)) => *i > 0,
            (Expect::Bulk(b), Reply::Bulk(Some(v))) => b == v,
            (Expect::AnyBulk, Reply::Bulk(Some(_))) => true,
            _ => false,
        }
    }
}

/// Pre-encoded commands.
pub struct Commands {
    /// Each command's encoding, back to back.
    bytes: Vec<u8>,
    /// Start offset of each command in `bytes`, plus the end.
    offsets: Vec<usize>,
    /// Commands come in runs of this many that must go, in order, down one
    /// connection (an ACQUIRE and the RELEASE of the same name): 1 by default.
    group: usize,
}

impl Commands {
    /// Encodes `n` commands; `f(i)` returns command `i`'s arguments.
    pub fn build(n: usize, f: impl Fn(usize) -> Vec<Vec<u8>>) -> Commands {
        let mut bytes = Vec::with_capacity(n * 64);
        let mut offsets = Vec::with_capacity(n + 1);
        for i in 0..n {
            offsets.push(bytes.len());
            let args = f(i);
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            encode(&refs, &mut bytes);
        }
        offsets.push(bytes.len());
        Commands {
            bytes,
            offsets,
            group: 1,
        }
    }

    /// Keeps every run of `group` consecutive commands on one connection.
    pub fn grouped(mut self, group: usize) -> Commands {
        self.group = group.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn range(&self, from: usize, to: usize) -> &[u8] {
        &self.bytes[self.offsets[from]..self.offsets[to]]
    }
}

/// Shorthand: a command from string-ish parts.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(Vec::<u8>::from(AsRef::<[u8]>::as_ref(&$a)),)*] };
}

/// Sends all `cmds` to the server on `port` (database `db`) and returns the
/// wall time from the moment every connection is ready to the last reply.
/// Fails if any reply does not match `expect`.
pub fn run(
    port: u16,
    db: u32,
    conns: usize,
    depth: usize,
    cmds: &Arc<Commands>,
    expect: &Expect,
) -> Result<Duration, String> {
    let n = cmds.len();
    let conns = conns.max(1).min(n.max(1));
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut handles = Vec::new();
    // Split at whole groups (the last connection takes any remainder).
    let (g, groups) = (cmds.group, n / cmds.group);
    for c in 0..conns {
        let from = groups * c / conns * g;
        let to = if c + 1 == conns {
            n
        } else {
            groups * (c + 1) / conns * g
        };
        let cmds = Arc::clone(cmds);
        let barrier = Arc::clone(&barrier);
        let expect = expect.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let mut con = Conn::connect(port).map_err(|e| e.to_string());
            if let (Ok(c), true) = (con.as_mut(), db != 0) {
                if let Err(e) = c.call(&["SELECT", &db.to_string()]) {
                    con = Err(e);
                }
            }
            barrier.wait();
            let mut con = con?;
            let (mut bad, mut first_bad) = (0usize, None);
            let mut i = from;
            while i < to {
                let end = (i + depth).min(to);
                con.send(cmds.range(i, end)).map_err(|e| e.to_string())?;
                for j in i..end {
                    let r = con.read().map_err(|e| e.to_string())?;
                    if !expect.check(&r) {
                        bad += 1;
                        first_bad.get_or_insert((j, r));
                    }
                }
                i = end;
            }
            match first_bad {
                None => Ok(()),
                Some((j, r)) => Err(format!(
                    "{bad} of {} replies were not {expect:?} (first: command #{j} got {})",
                    to - from,
                    r.show()
                )),
            }
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => err = Some(e),
            Err(_) => err = Some("load thread panicked".into()),
        }
    }
    let took = start.elapsed();
    match err {
        Some(e) => Err(e),
        None => Ok(took),
    }
}

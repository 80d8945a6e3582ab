//! The recorded history: one JSON object per line, appended by each process
//! to its own file in the run directory, with times on `CLOCK_MONOTONIC` in
//! ns (the clock every process on this machine shares: Rust reads it with
//! `clock_gettime`, Node with `process.hrtime.bigint()`).
//!
//! Only flat objects are written and read: string, integer, boolean and
//! null values, which is all a history needs (no JSON library).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;

/// Now on `CLOCK_MONOTONIC`, in ns.
pub fn now_ns() -> i64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

/// A value of a history line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// A string.
    S(String),
    /// An integer.
    N(i128),
    /// A boolean.
    B(bool),
    /// null.
    Null,
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::S(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::S(s)
    }
}
impl From<&String> for Val {
    fn from(s: &String) -> Val {
        Val::S(s.clone())
    }
}
impl From<bool> for Val {
    fn from(b: bool) -> Val {
        Val::B(b)
    }
}
impl From<i64> for Val {
    fn from(n: i64) -> Val {
        Val::N(n.into())
    }
}
impl From<u64> for Val {
    fn from(n: u64) -> Val {
        Val::N(n.into())
    }
}
impl From<usize> for Val {
    fn from(n: usize) -> Val {
        Val::N(n as i128)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// One line of a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line(pub BTreeMap<String, Val>);

impl Line {
    /// A line of kind `ev` at `t` from worker `w`.
    pub fn new(ev: &str, t: i64, w: &str) -> Line {
        Line::default().with("ev", ev).with("t", t).with("w", w)
    }

    /// Adds a field.
    pub fn with(mut self, k: &str, v: impl Into<Val>) -> Line {
        self.0.insert(k.to_string(), v.into());
        self
    }

    /// A string field.
    pub fn s(&self, k: &str) -> Option<&str> {
        match self.0.get(k) {
            Some(Val::S(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer field.
    pub fn n(&self, k: &str) -> Option<i128> {
        match self.0.get(k) {
            Some(Val::N(n)) => Some(*n),
            _ => None,
        }
    }

    /// An integer field as i64 (times, durations).
    pub fn i(&self, k: &str) -> Option<i64> {
        self.n(k).and_then(|n| i64::try_from(n).ok())
    }

    /// A boolean field.
    pub fn b(&self, k: &str) -> Option<bool> {
        match self.0.get(k) {
            Some(Val::B(b)) => Some(*b),
            _ => None,
        }
    }

    /// The line as JSON (no newline).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            quote(&mut out, k);
            out.push(':');
            match v {
                Val::S(s) => quote(&mut out, s),
                Val::N(n) => out.push_str(&n.to_string()),
                Val::B(b) => out.push_str(if *b { "true" } else { "false" }),
                Val::Null => out.push_str("null"),
            }
        }
        out.push('}');
        out
    }

    /// Parses one flat JSON object.
    ///
    /// # Errors
    /// What is wrong with `text`.
    pub fn parse(text: &str) -> Result<Line, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let mut line = Line::default();
        p.ws();
        p.eat(b'{')?;
        p.ws();
        if p.peek() == Some(b'}') {
            return Ok(line);
        }
        loop {
            p.ws();
            let k = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let v = p.value()?;
            line.0.insert(k, v);
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => return Ok(line),
                _ => return Err(format!("expected , or }} in {text}")),
            }
        }
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(format!("expected {} at {}", c as char, self.i - 1))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'u') => {
                        let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                        self.i += 4;
                        let code = u32::from_str_radix(
                            std::str::from_utf8(hex).map_err(|e| e.to_string())?,
                            16,
                        )
                        .map_err(|e| e.to_string())?;
                        let c = char::from_u32(code).unwrap_or('\u{fffd}');
                        let mut b = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    }
                    Some(c) => out.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
    fn value(&mut self) -> Result<Val, String> {
        match self.peek() {
            Some(b'"') => Ok(Val::S(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Val::B(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Val::B(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Val::Null)
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                text.parse().map(Val::N).map_err(|e| format!("{text}: {e}"))
            }
            _ => Err(format!("unexpected value at {}", self.i)),
        }
    }
}

/// An append-only history file of one process.
pub struct Recorder {
    file: Mutex<File>,
    /// The worker id written into each line.
    pub w: String,
}

impl Recorder {
    /// Opens (appending) `path` for worker `w`.
    ///
    /// # Panics
    /// If the file cannot be opened.
    pub fn open(path: &Path, w: &str) -> Recorder {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        Recorder {
            file: Mutex::new(file),
            w: w.to_string(),
        }
    }

    /// A new line of kind `ev` stamped now.
    pub fn line(&self, ev: &str) -> Line {
        Line::new(ev, now_ns(), &self.w)
    }

    /// Appends `line` (one `write`, so lines of processes sharing a file
    /// never interleave).
    pub fn write(&self, line: &Line) {
        let mut text = line.to_json();
        text.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(text.as_bytes());
    }
}

/// Every line of every `*.jsonl` file in `dir`.
///
/// # Errors
/// A file that cannot be read, or a line that is not a flat JSON object
/// (a line cut short at the end of a file, by a process killed mid-write,
/// is skipped).
pub fn read_dir(dir: &Path) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for path in files {
        let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        let n = lines.len();
        for (i, text) in lines.into_iter().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            match Line::parse(&text) {
                Ok(l) => out.push(l),
                Err(_) if i + 1 == n => {}
                Err(e) => return Err(format!("{}:{}: {e}", path.display(), i + 1)),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let l = Line::new("grant", 12, "w\"1")
            .with("token", 1_795_923_840_656_042u64)
            .with("ok", true)
            .with("check", Option::<bool>::None)
            .with("why", "a\nb");
        assert_eq!(Line::parse(&l.to_json()).unwrap(), l);
    }
}

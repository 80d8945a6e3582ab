//! A scripted connection for unit tests: the heartbeat and the retry loops
//! under `tokio::time::pause()`, without a server. Integration behaviour is
//! tested against real servers (`tests/`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

use crate::LockConnection;

/// How the fake answers one command.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// This value, at once.
    Value(Value),
    /// This I/O error, at once (a dropped connection: `BrokenPipe`).
    Io(std::io::ErrorKind),
    /// Never.
    Hang,
    /// This value, after a delay (a server that holds the command).
    After(Duration, Value),
}

type Script = dyn FnMut(&[String]) -> Reply + Send;

/// Commands sent, with when.
type Log = Vec<(Instant, Vec<String>)>;

/// A connection whose replies come from a script; it logs every command
/// with the (paused) time it was sent.
#[derive(Clone)]
pub(crate) struct FakeConn {
    script: Arc<Mutex<Box<Script>>>,
    log: Arc<Mutex<Log>>,
}

impl FakeConn {
    pub(crate) fn new(script: impl FnMut(&[String]) -> Reply + Send + 'static) -> Self {
        FakeConn {
            script: Arc::new(Mutex::new(Box::new(script))),
            log: Arc::default(),
        }
    }

    /// Every command sent so far, with when.
    pub(crate) fn log(&self) -> Log {
        self.log.lock().unwrap().clone()
    }

    /// When each command named `name` was sent, relative to `t0`, in ms.
    pub(crate) fn times(&self, name: &str, t0: Instant) -> Vec<u128> {
        self.log()
            .into_iter()
            .filter(|(_, c)| c[0] == name)
            .map(|(t, _)| (t - t0).as_millis())
            .collect()
    }

    fn record(&self, cmd: &Cmd) -> Reply {
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        let reply = (self.script.lock().unwrap())(&args);
        self.log.lock().unwrap().push((Instant::now(), args));
        reply
    }
}

async fn answer(reply: Reply) -> RedisResult<Value> {
    match reply {
        Reply::Value(v) => Ok(v),
        Reply::Io(kind) => Err(std::io::Error::from(kind).into()),
        Reply::Hang => std::future::pending().await,
        Reply::After(d, v) => {
            tokio::time::sleep(d).await;
            Ok(v)
        }
    }
}

impl ConnectionLike for FakeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = self.record(cmd);
        Box::pin(answer(reply))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let replies: Vec<Reply> = pipeline.cmd_iter().map(|c| self.record(c)).collect();
        Box::pin(async move {
            let mut values = Vec::with_capacity(replies.len());
            for r in replies {
                values.push(answer(r).await?);
            }
            Ok(values.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl LockConnection for FakeConn {}

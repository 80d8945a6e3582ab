//! Hostile input: random argument vectors, for every command the module
//! registers (as the server lists them), must never take the server down,
//! must always get a well-formed reply, and must not touch keys they do not
//! name.

use spacelock_testkit as kit;

use kit::Server;
use rand::{rngs::StdRng, Rng, SeedableRng};
use redis::Value;

/// (command, number of arguments after the name) of every command the
/// module registers, from the server (`COMMAND LIST FILTERBY MODULE`, then
/// `COMMAND INFO` for the arity: a negative arity is a minimum), sorted so a
/// seed replays the same calls.
fn module_commands(con: &mut redis::Connection) -> Vec<(String, usize)> {
    let mut names: Vec<String> = redis::cmd("COMMAND")
        .arg("LIST")
        .arg("FILTERBY")
        .arg("MODULE")
        .arg("spacelock")
        .query(con)
        .unwrap();
    names.sort();
    let infos: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(&names)
        .query(con)
        .unwrap();
    names
        .into_iter()
        .zip(infos)
        .map(|(name, info)| {
            let Value::Array(fields) = &info else {
                panic!("COMMAND INFO {name}: {info:?}")
            };
            let Some(Value::Int(arity)) = fields.get(1) else {
                panic!("COMMAND INFO {name}: {info:?}")
            };
            (name, arity.unsigned_abs() as usize - 1)
        })
        .collect()
}

fn junk(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..12) {
        0 => Vec::new(),
        1 => rng.random::<i64>().to_string().into_bytes(),
        2 => (-rng.random_range(0..1_000_000i64))
            .to_string()
            .into_bytes(),
        3 => "9".repeat(rng.random_range(19..40)).into_bytes(),
        4 => rng.random_range(1..100_000i64).to_string().into_bytes(),
        5 => (0..rng.random_range(1..64)).map(|_| rng.random()).collect(),
        6 => vec![b'x'; rng.random_range(200..200_000)],
        7 => b"WAIT".to_vec(),
        8 => format!("h:{}", rng.random_range(0..6)).into_bytes(),
        9 => b"{".repeat(rng.random_range(1..5)),
        10 => vec![0u8; rng.random_range(1..8)],
        _ => "\r\n$-1\r\n*3\r\n".as_bytes().to_vec(),
    }
}

#[kit::test]
fn random_argument_vectors_never_hurt_the_server() {
    let seed: u64 = std::env::var("SPACELOCK_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let total: usize = std::env::var("SPACELOCK_HOSTILE_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if kit::soak() { 1_000_000 } else { 10_000 });
    println!("hostile: SPACELOCK_HOSTILE_SEED={seed} SPACELOCK_HOSTILE_CALLS={total}");
    let mut server = Server::new();
    let mut con = server.conn();
    let commands = module_commands(&mut con);
    println!("hostile: commands {commands:?}");
    for name in ["spacelock.acquire", "spacelock.check", "spacelock.newterm"] {
        assert!(
            commands.iter().any(|(n, _)| n == name),
            "{name}: {commands:?}"
        );
    }
    // Bystanders: never named by any call, so they must never change.
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("bystander:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("RPUSH")
        .arg("h:5")
        .arg("a list")
        .query(&mut con)
        .unwrap();
    let bystanders_before = kit::snapshot(&mut con)
        .into_iter()
        .filter(|(k, ..)| k.starts_with(b"bystander:"))
        .collect::<Vec<_>>();

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ok, mut errors) = (0usize, 0usize);
    let mut done = 0;
    while done < total {
        let n = (total - done).min(100);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for _ in 0..n {
            let (cmd, arity) = &commands[rng.random_range(0..commands.len())];
            let arity = *arity;
            // Mostly the right arity, so the deeper paths are reached too.
            let argc = if rng.random_bool(0.6) {
                arity
            } else {
                rng.random_range(0..7)
            };
            let mut args: Vec<Vec<u8>> = (0..argc).map(|_| junk(&mut rng)).collect();
            // A blocking WAIT must not stall the pipeline: keep its timeout
            // at 1 ms whenever it would parse as a valid one.
            for i in 1..args.len() {
                if args[i - 1].eq_ignore_ascii_case(b"WAIT")
                    && std::str::from_utf8(&args[i]).is_ok_and(|s| s.parse::<u64>().is_ok())
                {
                    args[i] = b"1".to_vec();
                }
            }
            let mut c = redis::cmd(cmd.as_str());
            for a in &args {
                c.arg(a);
            }
            pipe.add_command(c);
        }
        let replies: Vec<Value> = pipe
            .query(&mut con)
            .unwrap_or_else(|e| panic!("seed {seed}: connection broke: {e}\n{}", server.log()));
        assert_eq!(replies.len(), n);
        for r in &replies {
            match r {
                Value::ServerError(e) => {
                    errors += 1;
                    let code = e.code();
                    assert!(
                        ["ERR", "WRONGTYPE"].contains(&code),
                        "seed {seed}: unexpected error code {code}: {e:?}"
                    );
                }
                Value::Int(_)
                | Value::Nil
                | Value::BulkString(_)
                | Value::Array(_)
                | Value::Map(_) => ok += 1,
                other => panic!("seed {seed}: malformed reply {other:?}"),
            }
        }
        done += n;
    }
    assert!(server.is_alive(), "server died:\n{}", server.log());
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let bystanders_after = kit::snapshot(&mut con)
        .into_iter()
        .filter(|(k, ..)| k.starts_with(b"bystander:"))
        .collect::<Vec<_>>();
    assert_eq!(bystanders_after, bystanders_before, "seed {seed}");
    let t: String = redis::cmd("TYPE").arg("h:5").query(&mut con).unwrap();
    assert_eq!(t, "list", "a list is never overwritten by a lock command");
    // Every other key is a lock (a string with a TTL) or a fence counter.
    let mut locks = 0;
    for (k, t, v, exp) in kit::snapshot(&mut con) {
        // A lock may expire between KEYS and TYPE/PEXPIRETIME (random TTLs).
        if k.starts_with(b"bystander:") || k == b"h:5" || t == "none" || exp == -2 {
            continue;
        }
        assert_eq!(t, "string", "seed {seed}");
        if k.starts_with(b"spacelock:fence:") {
            assert!(std::str::from_utf8(&v).unwrap().parse::<i64>().unwrap() >= 1);
            // Kept, or expiring a retention after their lease (never
            // before the lease it fences).
            assert!(exp == -1 || exp > 0, "fence key expiry {exp}");
        } else {
            assert!(exp > 0, "a lock always has a TTL");
            locks += 1;
        }
    }
    println!("hostile: {locks} locks left");
    println!("hostile: {ok} proper replies, {errors} errors");
    assert!(ok > 0 && errors > 0, "both paths exercised");
    assert!(
        !server.log().contains("internal error"),
        "a handler panicked"
    );
}

kit::main!();

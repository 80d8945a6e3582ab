//! In-repo fuzz harness over argument parsing and the lock state
//! machine. `cargo fuzz` needs a nightly toolchain, which this project does not
//! assume; these randomized property tests run on stable, in CI, in well under
//! a second, 100 times longer under `SPACELOCK_SOAK` (set, and neither
//! empty nor `0`, as `make soak` sets it), and as long as asked with
//! `SPACELOCK_FUZZ_ITERS`:
//!
//! ```sh
//! SPACELOCK_FUZZ_ITERS=20000000 cargo test --release -p spacelock-core fuzz -- --nocapture
//! SPACELOCK_FUZZ_SEED=1234 cargo test --release -p spacelock-core fuzz   # replay a seed
//! ```

use crate::args::{check_owner, expire_at, parse_i64, parse_timeout, parse_ttl};
use crate::lock::{self, MemoryStore, Value};
use crate::tokens::{Terms, TokenMode};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `SPACELOCK_FUZZ_ITERS`, else `default`, or 100 × `default` in a soak.
/// (The core cannot use the test kit; this reads `SPACELOCK_SOAK` the way
/// `kit::soak()` does.)
pub(crate) fn iters(default: usize) -> usize {
    let soak = std::env::var_os("SPACELOCK_SOAK").is_some_and(|v| !v.is_empty() && v != "0");
    std::env::var("SPACELOCK_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if soak { default * 100 } else { default })
}

pub(crate) fn seed() -> u64 {
    let seed = std::env::var("SPACELOCK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("SPACELOCK_FUZZ_SEED={seed}");
    seed
}

/// Bytes that look like numbers more often than not.
fn numberish(rng: &mut StdRng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789-+ .eEx\x00\xff";
    let len = rng.random_range(0..24);
    match rng.random_range(0..4) {
        0 => rng.random::<i64>().to_string().into_bytes(),
        1 => (0..len).map(|_| rng.random()).collect(),
        _ => (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect(),
    }
}

#[test]
fn fuzz_integer_parsing_accepts_exactly_canonical_decimals() {
    let mut rng = StdRng::seed_from_u64(seed());
    for _ in 0..iters(200_000) {
        let input = numberish(&mut rng);
        let parsed = parse_i64(&input);
        // string2ll semantics: accepted iff the bytes are the canonical
        // decimal form of an i64.
        match parsed {
            Some(n) => assert_eq!(n.to_string().as_bytes(), &input[..]),
            None => {
                let canonical = std::str::from_utf8(&input)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .is_some_and(|n| n.to_string().as_bytes() == input);
                assert!(!canonical, "rejected canonical {input:?}");
            }
        }
        // The validators never panic and agree with the parser.
        let ttl = parse_ttl(&input, 86_400_000);
        assert_eq!(
            ttl.is_ok(),
            parsed.is_some_and(|n| (1..=86_400_000).contains(&n))
        );
        assert_eq!(
            parse_timeout(&input).is_ok(),
            parsed.is_some_and(|n| n >= 0)
        );
        let _ = check_owner(&input, rng.random_range(-1..30));
        let _ = expire_at(rng.random(), parsed.unwrap_or(1));
    }
}

#[test]
fn fuzz_state_machine_invariants() {
    let mut rng = StdRng::seed_from_u64(seed());
    let keys: [&[u8]; 3] = [b"a", b"{a}b", b"\x00"];
    let owners: [&[u8]; 3] = [b"x", b"y", b"z"];
    let mut s = MemoryStore::at(1_000_000);
    let mut process = lock::Process {
        terms: Terms::open_at(s.now),
        ledger: crate::ledger::Ledger::new(),
    };
    let mut last_token = [0i64; 3];
    // Every token ever issued for a name, in term mode: never twice.
    let mut issued = std::collections::HashSet::new();
    let mut fence_lost = [false; 3];
    for step in 0..iters(200_000) {
        let k = rng.random_range(0..keys.len());
        let o = owners[rng.random_range(0..owners.len())];
        let ttl = rng.random_range(1..50);
        let holder_before = s.get(keys[k]).cloned();
        // Mostly term mode; sometimes a switch to plain counters and back.
        // Fence keys kept, or expiring a short retention after the lease.
        let mode = if rng.random_range(0..20) == 0 {
            TokenMode::Counter
        } else {
            TokenMode::Term
        };
        let policy = lock::Policy {
            mode,
            retention_ms: [0, 5, 100][rng.random_range(0..3)],
        };
        let fence_present = s.get(&crate::fence::fence_key(keys[k])).is_some();
        match rng.random_range(0..7) {
            0 | 1 => {
                match lock::acquire(&mut s.view(keys[k], o), ttl, &mut process, policy).unwrap() {
                    Some(t) => {
                        assert!(holder_before.is_none(), "step {step}: granted a held lock");
                        if mode == TokenMode::Term {
                            assert!(t > last_token[k], "step {step}: token went backwards");
                            assert!(issued.insert((k, t)), "step {step}: token {t} issued twice");
                        } else if !fence_lost[k] && fence_present {
                            assert!(t > last_token[k], "step {step}: counter went backwards");
                        }
                        fence_lost[k] = false;
                        last_token[k] = t;
                        assert_eq!(s.get(keys[k]), Some(&Value::Str(o.to_vec())));
                    }
                    None => assert!(holder_before.is_some()),
                }
            }
            2 => {
                let ok = lock::refresh(&mut s.view(keys[k], o), ttl, &mut process, policy).unwrap();
                assert_eq!(ok, holder_before == Some(Value::Str(o.to_vec())));
                if ok {
                    assert_eq!(s.expire_at(keys[k]), Some(s.now + ttl));
                }
            }
            3 => {
                let ok = lock::release(&mut s.view(keys[k], o), &mut process, policy).unwrap();
                assert_eq!(ok, holder_before == Some(Value::Str(o.to_vec())));
                assert_eq!(s.get(keys[k]).is_none(), ok || holder_before.is_none());
            }
            4 => s.now += rng.random_range(0..60),
            5 => {
                s.keys.remove(keys[k]);
            }
            _ => {
                // The fence key is lost (eviction, FLUSHALL, DEL).
                s.keys.remove(&crate::fence::fence_key(keys[k]));
                fence_lost[k] = true;
            }
        }
        // The fence counter equals the last token handed out, unless lost.
        let fence = crate::fence::fence_key(keys[k]);
        let stored = match s.get(&fence) {
            Some(Value::Str(v)) => lock::parse_token(v).unwrap(),
            _ => 0,
        };
        // (Or expired, a retention after the lease: never while it is held.)
        if fence_lost[k] {
            assert_eq!(stored, 0, "step {step}");
        } else if stored != 0 || s.get(keys[k]).is_some() {
            assert_eq!(stored, last_token[k], "step {step}");
        }
        // While the lock is held, the ledger knows its grant.
        if let Some(Value::Str(holder)) = s.get(keys[k]) {
            let known = process.ledger.token_of(&process.name(0, keys[k]), holder);
            assert_eq!(known, Some(last_token[k]), "step {step}");
        }
    }
}

//! Cluster hash slots (the only CRC16 in the tree, and whether this node
//! serves a slot) and fence-key naming: where a lock's fencing counter lives.
//!
//! Every lock key `K` has a companion counter key that never expires:
//!
//! ```text
//! spacelock:fence:{T}:K
//! ```
//!
//! `T` is a short *slot tag*: the first string in shortlex order over the
//! ASCII-sorted alphabet `[0-9A-Za-z]` whose Redis Cluster hash slot equals
//! the slot of `K`. Because the fence key's first `{…}` is always our own
//! non-empty tag (it contains no braces), the fence key hashes to `T`'s slot,
//! which is `K`'s slot, for *every* possible `K`: with a `{hash tag}`, without
//! one, with stray or empty braces, or with binary bytes. The counter therefore
//! always lives on the same node as its lock and moves with it through
//! resharding, the same guarantee Redisson gets from `redisson_lock_token:{name}`.
//!
//! The table of 16 384 tags is computed once at module load (a few ms) and
//! kept inline in a static (80 KiB).

use std::sync::OnceLock;

/// Prefix of every fence key; reserved for spacelock.
pub(crate) const FENCE_PREFIX: &[u8] = b"spacelock:fence:";

/// Number of Redis Cluster hash slots.
pub(crate) const SLOTS: usize = 16_384;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC16/XMODEM, the checksum Redis Cluster uses for key slots.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of `key` that Redis Cluster hashes: the content of the first
/// `{…}` if it is non-empty, else the whole key.
pub(crate) fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The Redis Cluster hash slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_part(key)) & (SLOTS as u16 - 1)
}

/// A tag of at most 4 bytes, stored inline so the table needs no heap per slot.
#[derive(Clone, Copy)]
struct Tag {
    len: u8,
    bytes: [u8; 4],
}

fn build_table() -> [Tag; SLOTS] {
    let mut table = [Tag {
        len: 0,
        bytes: [0; 4],
    }; SLOTS];
    let mut missing = SLOTS;
    let mut buf = [0u8; 4];
    // Shortlex: all strings of length 1, then 2, … Three characters already
    // cover every slot (62^3 = 238 328 candidates); four is a safety net.
    for len in 1..=4usize {
        let total = ALPHABET.len().pow(len as u32);
        for mut n in 0..total {
            for i in (0..len).rev() {
                buf[i] = ALPHABET[n % ALPHABET.len()];
                n /= ALPHABET.len();
            }
            let slot = usize::from(crc16(&buf[..len]) & (SLOTS as u16 - 1));
            if table[slot].len == 0 {
                table[slot] = Tag {
                    len: len as u8,
                    bytes: buf,
                };
                missing -= 1;
                if missing == 0 {
                    return table;
                }
            }
        }
    }
    table
}

fn table() -> &'static [Tag] {
    // Inline in the static, not on the heap: the module's statics go away
    // with the shared object on MODULE UNLOAD, and a heap table would leak
    // on every unload.
    static TABLE: OnceLock<[Tag; SLOTS]> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// Builds the tag table now, so the first ACQUIRE does not pay for it.
pub fn warm_up() {
    let _ = table();
}

/// The slot tag `T` for `slot` (see the module docs).
pub(crate) fn slot_tag(slot: u16) -> &'static [u8] {
    let tag = &table()[usize::from(slot) % SLOTS];
    &tag.bytes[..usize::from(tag.len)]
}

/// The pieces of the fence key name for lock `key`, in order.
fn fence_key_parts(key: &[u8]) -> [&[u8]; 5] {
    [FENCE_PREFIX, b"{", slot_tag(key_slot(key)), b"}:", key]
}

/// The fence key name for lock `key`.
pub fn fence_key(key: &[u8]) -> Vec<u8> {
    fence_key_parts(key).concat()
}

/// Writes the fence key name for lock `key` into the front of `out` and
/// returns it, or `None` if it does not fit (then use [`fence_key`]). Lets
/// the command path build the name without a heap allocation.
pub fn fence_key_in<'a>(key: &[u8], out: &'a mut [u8]) -> Option<&'a [u8]> {
    let parts = fence_key_parts(key);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut at = 0;
    for part in parts {
        out.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
    }
    out.get(..len)
}

/// Whether the `myself` node of a `CLUSTER NODES` text serves `slot` and is
/// neither migrating nor importing it.
pub fn serves_slot(nodes: &str, slot: u16) -> bool {
    let Some(line) = nodes.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    }) else {
        return false;
    };
    let mut owned = false;
    for field in line.split(' ').skip(8) {
        if let Some(open) = field.strip_prefix('[') {
            // `[slot->-id]` (migrating) or `[slot-<-id]` (importing).
            if open.split('-').next().and_then(|n| n.parse::<u16>().ok()) == Some(slot) {
                return false;
            }
            continue;
        }
        let (lo, hi) = field.split_once('-').unwrap_or((field, field));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            owned |= (lo..=hi).contains(&slot);
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis_reference_vectors() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn hash_tag_rules() {
        // (key, part that is hashed)
        let cases: &[(&[u8], &[u8])] = &[
            (b"plain", b"plain"),
            (b"{tag}rest", b"tag"),
            (b"a{tag}b{other}", b"tag"),
            (b"{}empty", b"{}empty"),
            (b"{}{x}", b"{}{x}"),
            (b"open{only", b"open{only"),
            (b"close}only", b"close}only"),
            (b"}{a}", b"a"),
            (b"{{a}}", b"{a"),
            (b"\x00{\xff\xfe}\r\n", b"\xff\xfe"),
        ];
        for (key, part) in cases {
            assert_eq!(hash_part(key), *part, "key {key:?}");
        }
    }

    #[test]
    fn every_slot_has_a_short_tag_that_hashes_to_it() {
        for slot in 0..SLOTS as u16 {
            let tag = slot_tag(slot);
            assert!(!tag.is_empty() && tag.len() <= 3, "slot {slot}");
            assert!(!tag.contains(&b'{') && !tag.contains(&b'}'));
            assert_eq!(crc16(tag) & 16383, slot);
        }
    }

    #[test]
    fn fence_key_shares_the_slot_of_any_lock_key() {
        let keys: &[&[u8]] = &[
            b"git-sync:lock:space-42",
            b"{user}:lock",
            b"x{}y",
            b"{}",
            b"{",
            b"}",
            b"a}{b",
            b"",
            b"\x00\x01\xff{\x80}",
            b"spacelock:fence:{0}:nested",
        ];
        for key in keys {
            let fence = fence_key(key);
            assert!(fence.starts_with(FENCE_PREFIX));
            assert!(fence.ends_with(key));
            assert_eq!(key_slot(&fence), key_slot(key), "key {key:?}");
        }
        // Pseudo-random binary keys, deterministic so failures reproduce.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 12) as usize;
            let key: Vec<u8> = (0..len)
                .map(|i| match (x >> (i * 5)) & 7 {
                    0 => b'{',
                    1 => b'}',
                    _ => (x >> (i * 3)) as u8,
                })
                .collect();
            assert_eq!(key_slot(&fence_key(&key)), key_slot(&key), "key {key:?}");
        }
    }

    #[test]
    fn fence_key_in_matches_fence_key_or_says_it_does_not_fit() {
        let mut buf = [0u8; 40];
        for key in [
            &b""[..],
            b"k",
            b"{tag}x",
            b"a-rather-long-lock-key-name-0123456789",
        ] {
            let whole = fence_key(key);
            match fence_key_in(key, &mut buf) {
                Some(name) => assert_eq!(name, &whole[..], "key {key:?}"),
                None => assert!(whole.len() > buf.len(), "key {key:?} fits"),
            }
        }
        assert!(fence_key_in(b"a-rather-long-lock-key-name-0123456789", &mut buf).is_none());
    }

    #[test]
    fn documented_example() {
        // README: the fence key of `git-sync:lock:space-42`.
        let key = b"git-sync:lock:space-42";
        let slot = key_slot(key);
        let tag = slot_tag(slot);
        let expected = [b"spacelock:fence:{".as_slice(), tag, b"}:", key].concat();
        assert_eq!(fence_key(key), expected);
    }

    #[test]
    fn cluster_nodes_parsing() {
        let me = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-100 200 [150->-b2] [300-<-b2]\n";
        let other = "b2 127.0.0.1:7001@17001 master - 0 1 2 connected 101-199 201-16383\n";
        let nodes = format!("{other}{me}");
        assert!(serves_slot(&nodes, 0));
        assert!(serves_slot(&nodes, 100));
        assert!(serves_slot(&nodes, 200));
        assert!(!serves_slot(&nodes, 101), "another node's slot");
        assert!(!serves_slot(&nodes, 150), "migrating away");
        assert!(!serves_slot(&nodes, 300), "importing");
        assert!(!serves_slot(&nodes, 16383));
        let replica = "c3 127.0.0.1:7002@17002 myself,slave a1 0 0 1 connected\n";
        assert!(!serves_slot(replica, 0));
        assert!(!serves_slot("", 0));
    }
}

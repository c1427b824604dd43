//! Order ids (docs/DESIGN.md, "Order ids"): the UUID ingest gives an order when it
//! accepts it. How ids are made is fixed per database when `dtss init` creates it
//! (`sinks::id_scheme` reads it), so every ingest replica makes them alike:
//!
//! - `UserTagged`, every database created now. The id's first two bytes are the
//!   user's tag (16 bits of SHA-256 over the user id), so the result table's primary
//!   key keeps a user's orders together and lists them without a second index. Then,
//!   without an idempotency key, the acceptance time (48 bits of milliseconds) and 58
//!   random bits, so a tag's ids grow with time; with a key, the bits of the hash of
//!   the key and the user. UUID version 8.
//! - `Untagged`, databases the first version created: UUIDv7 without a key, the hash of
//!   the key and the user (UUIDv8) with one; their `by_user` index lists a user's
//!   orders.
//!
//! Both are name-based for keyed orders: any replica, after any restart, gives the same
//! `(user, key)` the same id with no state shared.

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// How a database's order ids are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdScheme {
    /// UUIDv7, or UUIDv8 of the key's hash: a user's orders are listed by an index.
    Untagged,
    /// The user's 16-bit tag first: a user's orders share the primary key's prefix.
    UserTagged,
}

impl IdScheme {
    pub const ALL: [IdScheme; 2] = [IdScheme::Untagged, IdScheme::UserTagged];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            IdScheme::Untagged => "untagged",
            IdScheme::UserTagged => "user-tagged",
        }
    }

    pub fn parse(name: &str) -> Option<IdScheme> {
        IdScheme::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A new id for an order of `user_id` sent without a key, accepted now.
    pub fn fresh(self, user_id: &str) -> Uuid {
        match self {
            IdScheme::Untagged => Uuid::now_v7(),
            IdScheme::UserTagged => tagged_by_time(user_tag(user_id), crate::now_ms() as u64),
        }
    }

    /// The id of the order `user_id` sends with idempotency `key`.
    pub fn keyed(self, user_id: &str, key: &str) -> Uuid {
        let mut bytes = key_hash(user_id, key);
        if self == IdScheme::UserTagged {
            bytes[..2].copy_from_slice(&user_tag(user_id).to_be_bytes());
        }
        Uuid::new_v8(bytes)
    }
}

/// The user's tag: the first 16 bits of SHA-256 over its id.
pub fn user_tag(user_id: &str) -> u16 {
    let mut h = Sha256::new();
    h.update(b"dtss user tag\0");
    h.update(user_id.as_bytes());
    let full: [u8; 32] = h.finalize().into();
    u16::from_be_bytes([full[0], full[1]])
}

/// The first four characters of every user-tagged id of `user_id`, as the result table
/// stores ids (lower-case hex, hyphenated).
pub fn tag_prefix(user_id: &str) -> String {
    format!("{:04x}", user_tag(user_id))
}

/// Tag, then the 48 bits of `ms` around the version nibble and the variant bits, then
/// random bits: ids of one tag sort by time (to the millisecond).
fn tagged_by_time(tag: u16, ms: u64) -> Uuid {
    let ms = ms & ((1 << 48) - 1);
    let random = rand::random::<u64>() & ((1 << 58) - 1);
    let value = (tag as u128) << 112
        | ((ms >> 16) as u128) << 80
        | (((ms >> 4) & 0xfff) as u128) << 64
        | ((ms & 0xf) as u128) << 58
        | random as u128;
    // new_v8 writes the version (bits 76–79) and the variant (bits 62–63), both zero here.
    Uuid::new_v8(value.to_be_bytes())
}

/// 128 bits of SHA-256 over the key and the user. A key holds no NUL, so
/// `key ‖ NUL ‖ user` names one pair only.
fn key_hash(user_id: &str, key: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"dtss order id\0");
    h.update(key.as_bytes());
    h.update([0]);
    h.update(user_id.as_bytes());
    let full: [u8; 32] = h.finalize().into();
    full[..16].try_into().expect("16 of 32 bytes")
}

/// Whether `id` is the id of `(user_id, key)` under either scheme (a database uses one;
/// the message does not say which). The schemes' ids differ only in the first two
/// bytes: the key's hash is computed once, the user's tag only when the rest matches.
pub fn is_keyed_id(id: Uuid, user_id: &str, key: &str) -> bool {
    let untagged = Uuid::new_v8(key_hash(user_id, key));
    let (head, rest) = id.as_bytes().split_at(2);
    rest == &untagged.as_bytes()[2..] && (id == untagged || head == user_tag(user_id).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_id_depends_on_the_user_and_the_key_only() {
        for s in IdScheme::ALL {
            let a = s.keyed("u-1", "k-1");
            assert_eq!(a, s.keyed("u-1", "k-1"));
            assert_eq!(a.get_version_num(), 8);
            assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
            assert_ne!(a, s.keyed("u-2", "k-1"));
            assert_ne!(a, s.keyed("u-1", "k-2"));
            // The separator keeps the pair unambiguous.
            assert_ne!(s.keyed("b", "a"), s.keyed("", "a\0b"));
        }
        assert_ne!(
            IdScheme::Untagged.keyed("u-1", "k-1"),
            IdScheme::UserTagged.keyed("u-1", "k-1")
        );
    }

    #[test]
    fn user_tagged_ids_start_with_the_users_tag() {
        for user in ["u-1", "u-2", "", "ü-ser with spaces"] {
            let prefix = tag_prefix(user);
            let keyed = IdScheme::UserTagged.keyed(user, "k");
            let fresh = IdScheme::UserTagged.fresh(user);
            for id in [keyed, fresh] {
                assert!(id.to_string().starts_with(&prefix), "{id} for {user:?}");
                assert_eq!(id.get_version_num(), 8);
                assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            }
        }
        assert_ne!(user_tag("u-1"), user_tag("u-2"));
    }

    #[test]
    fn fresh_ids_of_a_tag_sort_by_time_and_differ() {
        let tag = user_tag("u-7");
        let times = [
            0u64,
            1,
            15,
            16,
            4095,
            4096,
            65_535,
            65_536,
            1_764_800_000_000,
            (1 << 48) - 1,
        ];
        let ids: Vec<Uuid> = times.iter().map(|&t| tagged_by_time(tag, t)).collect();
        for w in ids.windows(2) {
            assert!(w[0].to_string() < w[1].to_string(), "{} !< {}", w[0], w[1]);
            assert_eq!(w[1].get_version_num(), 8);
        }
        let a = IdScheme::UserTagged.fresh("u-7");
        let b = IdScheme::UserTagged.fresh("u-7");
        assert_ne!(a, b);
        assert_eq!(IdScheme::Untagged.fresh("u-7").get_version_num(), 7);
    }

    #[test]
    fn either_schemes_keyed_id_is_recognised_and_no_other() {
        for s in IdScheme::ALL {
            assert!(is_keyed_id(s.keyed("u", "k"), "u", "k"));
            assert!(!is_keyed_id(s.keyed("u", "k"), "u", "k2"));
            assert!(!is_keyed_id(s.keyed("u", "k"), "v", "k"));
        }
        assert!(!is_keyed_id(IdScheme::UserTagged.fresh("u"), "u", "k"));
        // The key's bits under another user's tag.
        let mut bytes = *IdScheme::UserTagged.keyed("u", "k").as_bytes();
        bytes[..2].copy_from_slice(&user_tag("v").to_be_bytes());
        assert!(!is_keyed_id(Uuid::from_bytes(bytes), "u", "k"));
    }

    #[test]
    fn scheme_names_round_trip() {
        for s in IdScheme::ALL {
            assert_eq!(IdScheme::parse(s.as_str()), Some(s));
        }
        assert_eq!(IdScheme::parse("tagged"), None);
    }
}

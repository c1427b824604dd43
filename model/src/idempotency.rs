//! Idempotency keys (docs/DESIGN.md, "Idempotency"): a client names an order with a key,
//! and every attempt with the same `(user_id, key)` is the same order.
//!
//! - The order id is derived from the pair (`ids::IdScheme::keyed`), so any ingest
//!   replica, after any restart, gives the same id with no state shared.
//! - The message carries the key and a digest of the order as settlement sees it (the
//!   user, the initiator, the merged items in id order): a later copy under the same id
//!   whose order differs is told apart from a retry of the same order.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Currency, FieldError, Item};

/// The HTTP header that carries a key.
pub const HEADER: &str = "Idempotency-Key";

/// The longest key, in characters.
pub const MAX_KEY_LEN: usize = 128;

/// 128 bits of SHA-256 over an order as settled.
pub type Digest = [u8; 16];

/// The key an order was sent with and the digest of the order, as the message carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyed {
    pub key: String,
    pub digest: Digest,
}

/// `raw` as a key: 1 to 128 visible ASCII characters (`!` to `~`); else the problem,
/// for the field `field`.
pub fn parse_key<'a>(raw: &'a [u8], field: &str) -> Result<&'a str, FieldError> {
    let problem = if raw.is_empty() || raw.len() > MAX_KEY_LEN {
        format!(
            "must be 1 to {MAX_KEY_LEN} characters long, got {}",
            raw.len()
        )
    } else if let Some(at) = raw.iter().position(|b| !b.is_ascii_graphic()) {
        format!(
            "must be visible ASCII characters (! to ~); byte {at} is 0x{:02x}",
            raw[at]
        )
    } else {
        return Ok(std::str::from_utf8(raw).expect("ASCII"));
    };
    Err(FieldError::new(field, problem))
}

/// The digest of an order as settled: its user, its initiator and its items (merged:
/// each id once), whatever their order.
pub fn digest(user_id: &str, initiator: Currency, items: &[Item]) -> Digest {
    let mut sorted = items.to_vec();
    sorted.sort_by_key(|it| it.id);
    let mut h = Sha256::new();
    h.update(b"dtss order digest\0");
    h.update((user_id.len() as u32).to_be_bytes());
    h.update(user_id.as_bytes());
    h.update(initiator.as_str().as_bytes());
    for it in sorted {
        h.update(it.id.to_be_bytes());
        h.update(it.number.to_be_bytes());
    }
    first_16(h)
}

fn first_16(h: Sha256) -> [u8; 16] {
    let full: [u8; 32] = h.finalize().into();
    full[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[(u32, u32)]) -> Vec<Item> {
        list.iter()
            .map(|&(id, number)| Item { id, number })
            .collect()
    }

    #[test]
    fn keys_are_visible_ascii_of_1_to_128_characters() {
        assert_eq!(
            parse_key(b"order-42/retry:ok~", "k").unwrap(),
            "order-42/retry:ok~"
        );
        assert!(parse_key(&[b'a'; 128], "k").is_ok());
        for bad in [
            &b""[..],
            &[b'a'; 129],
            b"has space",
            b"tab\t",
            "é".as_bytes(),
            b"nul\0",
        ] {
            let e = parse_key(bad, "Idempotency-Key").unwrap_err();
            assert_eq!(e.field, "Idempotency-Key");
        }
    }

    #[test]
    fn the_digest_ignores_item_order_but_not_content() {
        let usd: Currency = "USD".parse().unwrap();
        let d = digest("u", usd, &items(&[(1, 2), (3, 1)]));
        assert_eq!(d, digest("u", usd, &items(&[(3, 1), (1, 2)])));
        assert_ne!(d, digest("u", usd, &items(&[(1, 2), (3, 2)])));
        assert_ne!(d, digest("v", usd, &items(&[(1, 2), (3, 1)])));
        assert_ne!(
            d,
            digest("u", "EUR".parse().unwrap(), &items(&[(1, 2), (3, 1)]))
        );
    }
}

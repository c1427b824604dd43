//! The Kafka message format: one format-version byte, then the order encoded with
//! bincode 2 (serde, standard configuration). Nothing read from the topic is trusted:
//! a message is at most `MAX_MESSAGE` bytes, and every length inside it is checked
//! against what is left before anything is allocated.
//!
//! Versions: 1 is an order without an idempotency key; 2 (written now) adds the key and
//! the order's digest at the end (`Order::keyed`). This build reads both, so workers are
//! upgraded before ingest (an older worker holds its partition at a version-2 message).

use uuid::Uuid;

use crate::{Currency, Item, Order};

/// Bumped whenever `Order`'s encoding changes; readers reject versions they do not know.
pub const FORMAT_VERSION: u8 = 2;

/// Version 1: `Order` without `keyed`.
#[derive(serde::Deserialize)]
struct OrderV1 {
    order_id: Uuid,
    user_id: String,
    initiator: Currency,
    items: Vec<Item>,
    time: Option<i64>,
    accepted_at: i64,
}

impl From<OrderV1> for Order {
    fn from(o: OrderV1) -> Order {
        Order {
            order_id: o.order_id,
            user_id: o.user_id,
            initiator: o.initiator,
            items: o.items,
            time: o.time,
            accepted_at: o.accepted_at,
            keyed: None,
        }
    }
}

/// The largest message a reader decodes. An order within ingest's limits (64 KiB of
/// JSON, 100 items, a 64-character user id) encodes in well under 2 KiB.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// bincode's configuration, with every length claimed against `MAX_MESSAGE`.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("{0} bytes, over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// Written by a newer ingest than this reader: the partition must wait for an
    /// upgrade rather than skip it.
    #[error(
        "wire format version {0} is newer than this build's {FORMAT_VERSION}: upgrade the workers"
    )]
    Newer(u8),
    #[error("unknown wire format version {0} (this build reads {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// A length inside the message (a string's, the items') claims more memory than
    /// the limit allows.
    #[error("a length inside the message claims more than the {MAX_MESSAGE}-byte limit")]
    OverLimit,
    #[error("undecodable order: {0}")]
    Decode(bincode::error::DecodeError),
    #[error("{0} trailing bytes after the order")]
    Trailing(usize),
}

impl From<bincode::error::DecodeError> for WireError {
    fn from(e: bincode::error::DecodeError) -> Self {
        match e {
            bincode::error::DecodeError::LimitExceeded => WireError::OverLimit,
            e => WireError::Decode(e),
        }
    }
}

pub fn encode(order: &Order) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96 + order.items.len() * 6);
    buf.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(order, &mut buf, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    buf
}

pub fn decode(bytes: &[u8]) -> Result<Order, WireError> {
    let (version, body) = body(bytes)?;
    let (order, used) = if version == 1 {
        let (o, used) = bincode::serde::decode_from_slice::<OrderV1, _>(body, config())?;
        (Order::from(o), used)
    } else {
        bincode::serde::decode_from_slice(body, config())?
    };
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(order)
}

/// The message's version (one this build reads) and its body after the version byte.
fn body(bytes: &[u8]) -> Result<(u8, &[u8]), WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    match version {
        1..=FORMAT_VERSION => Ok((version, body)),
        v if v > FORMAT_VERSION && v < 0x80 => Err(WireError::Newer(v)),
        v => Err(WireError::UnknownVersion(v)),
    }
}

/// The order id at the front of a message whose whole order did not decode, if that
/// much of it does (the id is the order's first field).
pub fn order_id(bytes: &[u8]) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct Front {
        order_id: Uuid,
    }
    let (_, body) = body(bytes).ok()?;
    let (front, _): (Front, usize) = bincode::serde::decode_from_slice(body, config()).ok()?;
    Some(front.order_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Item;

    fn sample() -> Order {
        Order {
            order_id: uuid::Uuid::now_v7(),
            user_id: "u-42".into(),
            initiator: "EUR".parse().unwrap(),
            items: vec![
                Item { id: 1, number: 2 },
                Item {
                    id: 70000,
                    number: 1_000_000,
                },
            ],
            time: Some(1558868400000),
            accepted_at: 1_763_780_000_123,
            keyed: None,
        }
    }

    #[test]
    fn round_trips() {
        let o = sample();
        let bytes = encode(&o);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), o);
    }

    #[test]
    fn keyed_orders_round_trip_and_version_1_messages_still_read() {
        let request = crate::OrderRequest {
            user_id: "u-42".into(),
            initiator: "EUR".parse().unwrap(),
            items: vec![Item { id: 3, number: 2 }],
            time: None,
        };
        let keyed = request.accept_keyed("key-1", crate::IdScheme::UserTagged, 7);
        assert_eq!(decode(&encode(&keyed)).unwrap(), keyed);
        // A version-1 message is a version-2 one without the trailing `None`.
        let o = sample();
        let mut v1 = encode(&o);
        assert_eq!(v1.pop(), Some(0), "None encodes as one zero byte");
        v1[0] = 1;
        assert_eq!(decode(&v1).unwrap(), o);
        assert_eq!(order_id(&v1), Some(o.order_id));
    }

    #[test]
    fn rejects_unknown_version_truncation_and_trailing_bytes() {
        let mut bytes = encode(&sample());
        assert!(matches!(decode(&[]), Err(WireError::Empty)));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(WireError::Decode(_))
        ));
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(WireError::Trailing(1))));
        bytes[0] = 9;
        assert!(matches!(decode(&bytes), Err(WireError::Newer(9))));
        bytes[0] = 0;
        assert!(matches!(decode(&bytes), Err(WireError::UnknownVersion(0))));
        bytes[0] = 0xff;
        assert!(matches!(
            decode(&bytes),
            Err(WireError::UnknownVersion(0xff))
        ));
    }

    /// A message whose user id claims `len` bytes, after a readable order id.
    fn claiming(o: &Order, len: u64) -> Vec<u8> {
        let mut bytes = encode(o);
        let at = 1 + 1 + 16; // version, the id's length (16) and its bytes
        bytes.truncate(at);
        // bincode's varint: 253 then a u64.
        bytes.push(253);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        bytes
    }

    #[test]
    fn huge_length_prefixes_are_refused_without_allocating() {
        let o = sample();
        for len in [u64::MAX, 1 << 60, (MAX_MESSAGE as u64) + 1] {
            let bytes = claiming(&o, len);
            let e = decode(&bytes).unwrap_err();
            assert!(matches!(e, WireError::OverLimit), "{len}: {e}");
            // The id in front still reads.
            assert_eq!(order_id(&bytes), Some(o.order_id));
        }
        let big = vec![FORMAT_VERSION; MAX_MESSAGE + 1];
        assert!(matches!(decode(&big), Err(WireError::TooLarge(_))));
        assert_eq!(order_id(&[FORMAT_VERSION, 1, 2]), None);
    }

    #[test]
    fn the_order_id_reads_from_the_front_of_a_message() {
        let o = sample();
        assert_eq!(order_id(&encode(&o)), Some(o.order_id));
        let mut newer = encode(&o);
        newer[0] = FORMAT_VERSION + 1;
        assert_eq!(order_id(&newer), None);
    }
}

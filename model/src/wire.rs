//! The Kafka message format: one format-version byte, then the order encoded with
//! bincode 2 (serde, standard configuration).

use crate::Order;

/// Bumped whenever `Order`'s encoding changes; readers reject versions they do not know.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown wire format version {0} (this build reads {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("undecodable order: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the order")]
    Trailing(usize),
}

pub fn encode(order: &Order) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96 + order.items.len() * 6);
    buf.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(order, &mut buf, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    buf
}

pub fn decode(bytes: &[u8]) -> Result<Order, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (order, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())?;
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(order)
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
        assert!(matches!(decode(&bytes), Err(WireError::UnknownVersion(9))));
    }
}

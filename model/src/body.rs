//! An order's JSON body read in one pass, straight into the fields `validate_order`
//! checks: no `serde_json::Value` tree (a map and a string per key and per entry) is built
//! on the way. Every field keeps what validation needs to name its problem: a value of
//! the wrong JSON type is kept as `Other`, not an error, so that the first problem is
//! reported by field as before. As with a `Value`, unknown fields are skipped, a key given
//! twice keeps its last value, and the whole body must still be valid JSON.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The body: an object (its fields as read; None when absent or null), or another JSON
/// value.
pub(crate) enum Body {
    Object(Fields),
    Other,
}

#[derive(Default)]
pub(crate) struct Fields {
    pub user_id: Option<Scalar>,
    pub initiator: Option<Scalar>,
    pub items: Option<Items>,
    pub time: Option<Scalar>,
}

/// A field that should be a string or a number.
pub(crate) enum Scalar {
    Str(String),
    /// An integer JSON number (as serde_json reads it: u64 for those ≥ 0).
    U64(u64),
    I64(i64),
    /// A number with a fraction or exponent, or beyond 64 bits.
    Float,
    /// true, false, an array or an object.
    Other,
}

/// The `items` field: an array of entries (a body is at most 64 KiB, so are they), or
/// another JSON value.
pub(crate) enum Items {
    Array(Vec<Entry>),
    Other,
}

/// One entry of `items`: an object's `id` and `number`, or another JSON value.
pub(crate) enum Entry {
    Object {
        id: Option<Scalar>,
        number: Option<Scalar>,
    },
    Other,
}

/// Reads `body`, or says why it is not valid JSON.
pub(crate) fn read(body: &[u8]) -> Result<Body, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The visitor methods every non-object / non-array value maps to `$other`.
macro_rules! visit_scalars_as {
    ($other:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

/// Skips the rest of an array or object being read.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            visit_scalars_as!(Body::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Body, A::Error> {
                skip_seq(seq).map(|()| Body::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::UserId => f.user_id = map.next_value()?,
                        Key::Initiator => f.initiator = map.next_value()?,
                        Key::Items => f.items = map.next_value()?,
                        Key::Time => f.time = map.next_value()?,
                        Key::Id | Key::Number | Key::Unknown => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Body::Object(f))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys read; every other is `Unknown` (its value skipped).
enum Key {
    UserId,
    Initiator,
    Items,
    Time,
    Id,
    Number,
    Unknown,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "user_id" => Key::UserId,
                    "initiator" => Key::Initiator,
                    "items" => Key::Items,
                    "time" => Key::Time,
                    "id" => Key::Id,
                    "number" => Key::Number,
                    _ => Key::Unknown,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::I64(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                skip_seq(seq).map(|()| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                skip_map(map).map(|()| Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            visit_scalars_as!(Items::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8));
                while let Some(e) = seq.next_element()? {
                    entries.push(e);
                }
                Ok(Items::Array(entries))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Items, A::Error> {
                skip_map(map).map(|()| Items::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            visit_scalars_as!(Entry::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Entry, A::Error> {
                skip_seq(seq).map(|()| Entry::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let (mut id, mut number) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Id => id = map.next_value()?,
                        Key::Number => number = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Entry::Object { id, number })
            }
        }
        d.deserialize_any(V)
    }
}

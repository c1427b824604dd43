use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::body::{self, Body, Entry, Items, Scalar};
use crate::idempotency::{self, Keyed};
use crate::{Currency, IdScheme};

pub const MAX_ITEMS: usize = 100;
pub const MAX_NUMBER: u64 = 1_000_000;
pub const MAX_USER_ID_CHARS: usize = 64;

/// One line of an order: commodity `id`, `number` of units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: u32,
    pub number: u32,
}

/// A validated order as the client sent it, before ingest stamps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRequest {
    pub user_id: String,
    pub initiator: Currency,
    /// Distinct ids, in first-seen order; repeated ids merged.
    pub items: Vec<Item>,
    pub time: Option<i64>,
}

impl OrderRequest {
    /// Stamp the request with its id and acceptance time (ingest does this).
    pub fn accept(self, order_id: Uuid, accepted_at: i64) -> Order {
        Order {
            order_id,
            user_id: self.user_id,
            initiator: self.initiator,
            items: self.items,
            time: self.time,
            accepted_at,
            keyed: None,
        }
    }

    /// Stamp a request the client named with `key` (a valid key,
    /// `idempotency::parse_key`): its id is the key's under `scheme`, and it carries the
    /// key and the order's digest.
    pub fn accept_keyed(self, key: &str, scheme: IdScheme, accepted_at: i64) -> Order {
        let order_id = scheme.keyed(&self.user_id, key);
        let digest = idempotency::digest(&self.user_id, self.initiator, &self.items);
        let keyed = Keyed {
            key: key.to_string(),
            digest,
        };
        Order {
            keyed: Some(keyed),
            ..self.accept(order_id, accepted_at)
        }
    }
}

/// An accepted order, as it travels through Kafka.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: Uuid,
    pub user_id: String,
    pub initiator: Currency,
    pub items: Vec<Item>,
    pub time: Option<i64>,
    /// Milliseconds since the Unix epoch when ingest accepted it.
    pub accepted_at: i64,
    /// The client's idempotency key, and the order's digest, when it sent one.
    pub keyed: Option<Keyed>,
}

impl Order {
    /// The rules `validate_order` applies at ingest, applied again to an order read from
    /// Kafka (nothing on the topic is trusted): the user id's length, a configured
    /// initiator, 1–100 items of 1–1,000,000 units each, positive commodity ids. The same
    /// id twice is merged, as ingest does.
    pub fn check(mut self, currencies: &[Currency]) -> Result<Order, FieldError> {
        check_user_id(&self.user_id)?;
        if !currencies.contains(&self.initiator) {
            let problem = format!(
                "{} is not a configured currency ({})",
                self.initiator,
                list(currencies)
            );
            return Err(FieldError::new("initiator", problem));
        }
        check_item_count(self.items.len())?;
        for (i, it) in self.items.iter().enumerate() {
            if it.id == 0 || !(1..=MAX_NUMBER).contains(&(it.number as u64)) {
                let problem = format!(
                    "id {} × {}: ids are positive, numbers 1 to {MAX_NUMBER}",
                    it.id, it.number
                );
                return Err(FieldError::new(format!("items[{i}]"), problem));
            }
        }
        self.items = merged(self.items.iter().copied())?;
        if let Some(k) = &self.keyed {
            idempotency::parse_key(k.key.as_bytes(), "idempotency_key")?;
            if !crate::ids::is_keyed_id(self.order_id, &self.user_id, &k.key) {
                let problem = "is not the id of the order's user and idempotency key";
                return Err(FieldError::new("order_id", problem));
            }
            if k.digest != idempotency::digest(&self.user_id, self.initiator, &self.items) {
                return Err(FieldError::new("digest", "does not match the order"));
            }
        }
        Ok(self)
    }

    /// The digest of a keyed order (None for an order sent without a key).
    pub fn digest(&self) -> Option<idempotency::Digest> {
        self.keyed.as_ref().map(|k| k.digest)
    }
}

/// `items` with the same id twice merged (numbers added), in first-seen order; Err with
/// the id whose total passes u32.
pub fn merge_items(items: impl IntoIterator<Item = Item>) -> Result<Vec<Item>, u32> {
    let mut merged: Vec<Item> = Vec::new();
    for it in items {
        match merged.iter_mut().find(|m| m.id == it.id) {
            Some(m) => m.number = m.number.checked_add(it.number).ok_or(it.id)?,
            None => merged.push(it),
        }
    }
    Ok(merged)
}

/// The one rule for a line's number, at ingest and at the worker alike: the lines of one
/// id merged, each merged line holds 1 to `MAX_NUMBER` units. Err names the first entry
/// of the id whose lines add up to more.
pub(crate) fn merged(items: impl IntoIterator<Item = Item>) -> Result<Vec<Item>, FieldError> {
    let items: Vec<Item> = items.into_iter().collect();
    // At most 100 entries of at most 10^6 each (checked before): the sums fit in u32.
    let merged = merge_items(items.iter().copied()).expect("at most 100 × 10^6");
    match merged.iter().find(|m| m.number as u64 > MAX_NUMBER) {
        None => Ok(merged),
        Some(m) => {
            let i = items.iter().position(|it| it.id == m.id).unwrap_or(0);
            let problem = format!(
                "the lines of id {} add up to {} units, more than {MAX_NUMBER}",
                m.id, m.number
            );
            Err(FieldError::new(format!("items[{i}].number"), problem))
        }
    }
}

fn check_user_id(user_id: &str) -> Result<(), FieldError> {
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS {
        let problem = format!("must be 1 to {MAX_USER_ID_CHARS} characters long, got {chars}");
        return Err(FieldError::new("user_id", problem));
    }
    Ok(())
}

fn check_item_count(n: usize) -> Result<(), FieldError> {
    if n == 0 || n > MAX_ITEMS {
        let problem = format!("must hold 1 to {MAX_ITEMS} entries, got {n}");
        return Err(FieldError::new("items", problem));
    }
    Ok(())
}

/// What is wrong with one field of an order; becomes the 400 body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

/// Parse and validate an order body (docs/DESIGN.md, "API"). `currencies` are the configured ones.
/// Unknown fields are ignored; the first problem found is reported.
pub fn validate_order(body: &[u8], currencies: &[Currency]) -> Result<OrderRequest, FieldError> {
    let body =
        body::read(body).map_err(|e| FieldError::new("body", format!("not valid JSON: {e}")))?;
    let Body::Object(f) = body else {
        return Err(FieldError::new("body", "must be a JSON object"));
    };
    Ok(OrderRequest {
        user_id: user_id(f.user_id)?,
        initiator: initiator(f.initiator, currencies)?,
        items: items(f.items)?,
        time: time(f.time)?,
    })
}

fn user_id(v: Option<Scalar>) -> Result<String, FieldError> {
    let user_id = match v {
        None => return Err(FieldError::new("user_id", "is required")),
        Some(Scalar::Str(s)) => s,
        Some(Scalar::U64(n)) => n.to_string(),
        Some(Scalar::I64(n)) => n.to_string(),
        Some(_) => return Err(FieldError::new("user_id", "must be a string or an integer")),
    };
    check_user_id(&user_id)?;
    Ok(user_id)
}

fn initiator(v: Option<Scalar>, currencies: &[Currency]) -> Result<Currency, FieldError> {
    match v {
        None => Err(FieldError::new("initiator", "is required")),
        Some(Scalar::Str(s)) => s
            .parse::<Currency>()
            .ok()
            .filter(|c| currencies.contains(c))
            .ok_or_else(|| {
                let problem = format!(
                    "unknown currency {s:?}; expected one of {}",
                    list(currencies)
                );
                FieldError::new("initiator", problem)
            }),
        Some(_) => Err(FieldError::new(
            "initiator",
            "must be a currency code string",
        )),
    }
}

/// The items, the same id twice merged (numbers added).
fn items(v: Option<Items>) -> Result<Vec<Item>, FieldError> {
    let entries = match v {
        None => return Err(FieldError::new("items", "is required")),
        Some(Items::Array(entries)) => entries,
        Some(Items::Other) => return Err(FieldError::new("items", "must be an array")),
    };
    check_item_count(entries.len())?;
    let items = entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| item(i, entry))
        .collect::<Result<Vec<_>, _>>()?;
    merged(items)
}

/// Entry `i` of the items.
fn item(i: usize, entry: Entry) -> Result<Item, FieldError> {
    let Entry::Object { id, number } = entry else {
        return Err(FieldError::new(format!("items[{i}]"), "must be an object"));
    };
    let id = parse_id(id).map_err(|p| FieldError::new(format!("items[{i}].id"), p))?;
    let number = match number {
        None => return Err(FieldError::new(format!("items[{i}].number"), "is required")),
        Some(Scalar::U64(n)) => Some(n).filter(|n| (1..=MAX_NUMBER).contains(n)),
        Some(_) => None,
    }
    .ok_or_else(|| {
        let problem = format!("must be an integer from 1 to {MAX_NUMBER}");
        FieldError::new(format!("items[{i}].number"), problem)
    })? as u32;
    Ok(Item { id, number })
}

fn time(v: Option<Scalar>) -> Result<Option<i64>, FieldError> {
    match v {
        None => Ok(None),
        Some(Scalar::I64(n)) => Ok(Some(n)),
        Some(Scalar::U64(n)) if i64::try_from(n).is_ok() => Ok(Some(n as i64)),
        Some(_) => Err(FieldError::new("time", "must be an integer (milliseconds)")),
    }
}

fn parse_id(v: Option<Scalar>) -> Result<u32, &'static str> {
    const PROBLEM: &str = "must be a positive integer (or a string of one) below 2^32";
    let n = match v {
        None => return Err("is required"),
        Some(Scalar::U64(n)) => Some(n),
        Some(Scalar::Str(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Some(_) => None,
    };
    n.filter(|&n| n >= 1 && n <= u32::MAX as u64)
        .map(|n| n as u32)
        .ok_or(PROBLEM)
}

fn list(currencies: &[Currency]) -> String {
    currencies
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur() -> Vec<Currency> {
        ["RMB", "USD", "JPY", "EUR"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect()
    }

    fn check(body: &str) -> Result<OrderRequest, FieldError> {
        validate_order(body.as_bytes(), &cur())
    }

    fn field_of(body: &str) -> String {
        check(body).expect_err("should be rejected").field
    }

    #[test]
    fn lines_of_one_id_may_not_add_up_past_the_limit_at_ingest_nor_at_the_worker() {
        let entries = vec![r#"{"id":7,"number":1000000}"#; 99].join(",");
        let body = format!(
            r#"{{"user_id":"u","initiator":"USD","items":[{{"id":3,"number":1}},{entries}]}}"#
        );
        assert_eq!(field_of(&body), "items[1].number");
        let at_limit = r#"{"user_id":"u","initiator":"USD","items":[{"id":7,"number":999999},{"id":7,"number":1}]}"#;
        assert_eq!(
            check(at_limit).unwrap().items,
            vec![Item {
                id: 7,
                number: 1_000_000
            }]
        );
        // An order on the topic with a merged line past the limit (written by hand: ingest
        // refuses it) fails the worker's check with the same field.
        let mut order = check(at_limit).unwrap().accept(Uuid::nil(), 0);
        order.items = vec![
            Item {
                id: 7,
                number: 600_000,
            },
            Item {
                id: 7,
                number: 600_000,
            },
        ];
        let err = order.check(&cur()).unwrap_err();
        assert_eq!(err.field, "items[0].number");
    }

    #[test]
    fn accepts_the_spec_example_and_merges_ids() {
        let o = check(
            r#"{"user_id":"u-42","initiator":"USD","items":[{"id":1,"number":2},{"id":"3","number":1},{"id":"1","number":5}],"time":1558868400000,"extra":true}"#,
        )
        .unwrap();
        assert_eq!(o.user_id, "u-42");
        assert_eq!(o.initiator.as_str(), "USD");
        assert_eq!(
            o.items,
            vec![Item { id: 1, number: 7 }, Item { id: 3, number: 1 }]
        );
        assert_eq!(o.time, Some(1558868400000));
    }

    #[test]
    fn integer_user_id_is_kept_as_string() {
        let o = check(r#"{"user_id":42,"initiator":"RMB","items":[{"id":1,"number":1}]}"#).unwrap();
        assert_eq!(o.user_id, "42");
        assert_eq!(o.time, None);
    }

    #[test]
    fn each_malformed_field_is_named() {
        assert_eq!(field_of("{not json"), "body");
        assert_eq!(field_of("[1,2]"), "body");
        assert_eq!(
            field_of(r#"{"initiator":"USD","items":[{"id":1,"number":1}]}"#),
            "user_id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"","initiator":"USD","items":[{"id":1,"number":1}]}"#),
            "user_id"
        );
        let long = "x".repeat(65);
        assert_eq!(
            field_of(&format!(
                r#"{{"user_id":"{long}","initiator":"USD","items":[{{"id":1,"number":1}}]}}"#
            )),
            "user_id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","items":[{"id":1,"number":1}]}"#),
            "initiator"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"GBP","items":[{"id":1,"number":1}]}"#),
            "initiator"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"usd","items":[{"id":1,"number":1}]}"#),
            "initiator"
        );
        assert_eq!(field_of(r#"{"user_id":"u","initiator":"USD"}"#), "items");
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[]}"#),
            "items"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":{}}"#),
            "items"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":0,"number":1}]}"#),
            "items[0].id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":-3,"number":1}]}"#),
            "items[0].id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":"a1","number":1}]}"#),
            "items[0].id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":1.5,"number":1}]}"#),
            "items[0].id"
        );
        assert_eq!(
            field_of(
                r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1},{"number":1}]}"#
            ),
            "items[1].id"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":0}]}"#),
            "items[0].number"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1000001}]}"#),
            "items[0].number"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":"2"}]}"#),
            "items[0].number"
        );
        assert_eq!(
            field_of(r#"{"user_id":"u","initiator":"USD","items":[{"id":1}]}"#),
            "items[0].number"
        );
        assert_eq!(
            field_of(
                r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}],"time":"now"}"#
            ),
            "time"
        );
    }

    #[test]
    fn item_count_bounds() {
        let items = |n: usize| {
            (1..=n)
                .map(|i| format!(r#"{{"id":{i},"number":1}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        let body = |n| {
            format!(
                r#"{{"user_id":"u","initiator":"USD","items":[{}]}}"#,
                items(n)
            )
        };
        assert_eq!(check(&body(100)).unwrap().items.len(), 100);
        assert_eq!(field_of(&body(101)), "items");
    }

    #[test]
    fn an_order_read_from_kafka_is_checked_like_one_posted() {
        let usd: Currency = "USD".parse().unwrap();
        let eur: Currency = "EUR".parse().unwrap();
        let good = || Order {
            order_id: Uuid::nil(),
            user_id: "u".into(),
            initiator: usd,
            items: vec![
                Item { id: 7, number: 2 },
                Item { id: 3, number: 1 },
                Item { id: 7, number: 5 },
            ],
            time: None,
            accepted_at: 1,
            keyed: None,
        };
        let ok = good().check(&[usd]).unwrap();
        assert_eq!(
            ok.items,
            vec![Item { id: 7, number: 7 }, Item { id: 3, number: 1 }]
        );
        let field = |o: Order| o.check(&[usd]).unwrap_err().field;
        assert_eq!(
            field(Order {
                initiator: eur,
                ..good()
            }),
            "initiator"
        );
        assert_eq!(
            field(Order {
                user_id: "x".repeat(65),
                ..good()
            }),
            "user_id"
        );
        assert_eq!(
            field(Order {
                user_id: String::new(),
                ..good()
            }),
            "user_id"
        );
        assert_eq!(
            field(Order {
                items: vec![],
                ..good()
            }),
            "items"
        );
        assert_eq!(
            field(Order {
                items: vec![Item { id: 1, number: 1 }; 101],
                ..good()
            }),
            "items"
        );
        assert_eq!(
            field(Order {
                items: vec![Item { id: 0, number: 1 }],
                ..good()
            }),
            "items[0]"
        );
        assert_eq!(
            field(Order {
                items: vec![Item {
                    id: 1,
                    number: 1_000_001
                }],
                ..good()
            }),
            "items[0]"
        );
    }

    #[test]
    fn a_keyed_order_must_carry_its_keys_id_and_its_own_digest() {
        let usd: Currency = "USD".parse().unwrap();
        let request = check(
            r#"{"user_id":"u","initiator":"USD","items":[{"id":3,"number":1},{"id":7,"number":2},{"id":7,"number":5}]}"#,
        )
        .unwrap();
        let keyed = request.clone().accept_keyed("k-1", IdScheme::UserTagged, 5);
        assert_eq!(keyed.order_id, IdScheme::UserTagged.keyed("u", "k-1"));
        assert_eq!(keyed.clone().check(&[usd]).unwrap(), keyed);
        // A database of the first version's ids: its keyed ids are valid too.
        let untagged = request.clone().accept_keyed("k-1", IdScheme::Untagged, 5);
        assert_ne!(untagged.order_id, keyed.order_id);
        assert_eq!(untagged.clone().check(&[usd]).unwrap(), untagged);
        // The same order as another request (items in another order): the same digest.
        let again = check(
            r#"{"user_id":"u","initiator":"USD","items":[{"id":7,"number":7},{"id":3,"number":1}]}"#,
        )
        .unwrap()
        .accept_keyed("k-1", IdScheme::UserTagged, 9);
        assert_eq!(
            (again.order_id, again.digest()),
            (keyed.order_id, keyed.digest())
        );
        assert_eq!(request.clone().accept(Uuid::nil(), 1).digest(), None);
        let field = |o: Order| o.check(&[usd]).unwrap_err().field;
        let mut other_id = keyed.clone();
        other_id.order_id = Uuid::now_v7();
        assert_eq!(field(other_id), "order_id");
        let mut other_items = keyed.clone();
        other_items.items[0].number += 1;
        assert_eq!(field(other_items), "digest");
        let mut bad_key = keyed.clone();
        bad_key.keyed.as_mut().unwrap().key = "a b".into();
        assert_eq!(field(bad_key), "idempotency_key");
    }
}

//! `validate_order` reads a body in one pass, without a `serde_json::Value` tree. Here it
//! is checked against a reading through a `Value` (the way it was first written): on the
//! fuzz corpus of order bodies and on edge cases, both accept the same orders and name the
//! same field with the same problem.

use dtss_model::{validate_order, Currency, FieldError, Item, OrderRequest, MAX_ITEMS};
use serde_json::Value;

fn currencies() -> Vec<Currency> {
    ["RMB", "USD", "EUR"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect()
}

/// The reference: the body as a `Value`, then each field in turn.
fn through_value(body: &[u8], currencies: &[Currency]) -> Result<OrderRequest, FieldError> {
    let err = |f: &str, p: &str| FieldError::new(f, p);
    let value: Value = serde_json::from_slice(body).map_err(|_| err("body", "not valid JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| err("body", "not an object"))?;
    let user_id = match obj.get("user_id") {
        None | Some(Value::Null) => return Err(err("user_id", "is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(err("user_id", "must be a string or an integer")),
    };
    let chars = user_id.chars().count();
    if chars == 0 || chars > 64 {
        return Err(err("user_id", "length"));
    }
    let initiator = match obj.get("initiator") {
        None | Some(Value::Null) => return Err(err("initiator", "is required")),
        Some(Value::String(s)) => s
            .parse::<Currency>()
            .ok()
            .filter(|c| currencies.contains(c))
            .ok_or_else(|| err("initiator", "unknown"))?,
        Some(_) => return Err(err("initiator", "must be a currency code string")),
    };
    let entries = match obj.get("items") {
        None | Some(Value::Null) => return Err(err("items", "is required")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err("items", "must be an array")),
    };
    if entries.is_empty() || entries.len() > MAX_ITEMS {
        return Err(err("items", "count"));
    }
    let mut items: Vec<Item> = vec![];
    for (i, e) in entries.iter().enumerate() {
        let e = e
            .as_object()
            .ok_or_else(|| err(&format!("items[{i}]"), "must be an object"))?;
        let id = match e.get("id") {
            None | Some(Value::Null) => return Err(err(&format!("items[{i}].id"), "is required")),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().ok()
            }
            Some(_) => None,
        }
        .filter(|&n| n >= 1 && n <= u32::MAX as u64)
        .ok_or_else(|| err(&format!("items[{i}].id"), "bad"))? as u32;
        let number = match e.get("number") {
            None | Some(Value::Null) => {
                return Err(err(&format!("items[{i}].number"), "is required"))
            }
            Some(Value::Number(n)) => n.as_u64().filter(|n| (1..=1_000_000).contains(n)),
            Some(_) => None,
        }
        .ok_or_else(|| err(&format!("items[{i}].number"), "bad"))? as u32;
        match items.iter_mut().find(|m| m.id == id) {
            Some(m) => m.number += number,
            None => items.push(Item { id, number }),
        }
    }
    let time = match obj.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(_) => return Err(err("time", "must be an integer (milliseconds)")),
    };
    Ok(OrderRequest {
        user_id,
        initiator,
        items,
        time,
    })
}

/// Both readings of `body` agree: the same order, or the same field in error (the
/// problem's words are the reference's own, so only the field is compared).
fn agree(body: &[u8]) {
    let cur = currencies();
    let (got, want) = (validate_order(body, &cur), through_value(body, &cur));
    let shown = String::from_utf8_lossy(body);
    match (&got, &want) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{shown}"),
        (Err(a), Err(b)) => assert_eq!(a.field, b.field, "{shown}: {a} / {b}"),
        _ => panic!("{shown}: {got:?} against {want:?}"),
    }
}

#[test]
fn agrees_with_a_value_tree_on_the_fuzz_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/order_json");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        agree(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 100, "only {n} corpus files");
}

#[test]
fn agrees_with_a_value_tree_on_edge_cases() {
    let many = |n: usize| {
        let items: Vec<String> = (1..=n)
            .map(|i| format!(r#"{{"id":{i},"number":1}}"#))
            .collect();
        format!(
            r#"{{"user_id":"u","initiator":"USD","items":[{}]}}"#,
            items.join(",")
        )
    };
    let cases = [
        // A key twice: the last one counts.
        r#"{"user_id":"a","user_id":"b","initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":"a","initiator":"USD","items":[{"id":1,"number":1,"number":2,"id":"7"}]}"#.to_string(),
        r#"{"user_id":"a","initiator":"GBP","initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        // Escaped keys and values.
        r#"{"user\u005fid":"\u00e9\n","initiator":"\u0055SD","items":[{"\u0069d":"12","number":3}]}"#.to_string(),
        // Nulls, and values of every other type in every field.
        r#"{"user_id":null,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[null]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":null,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}],"time":null}"#.to_string(),
        r#"{"user_id":true,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":[1],"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":{"a":1},"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":1.5,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":-42,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":-0,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":18446744073709551616,"initiator":"USD","items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":1,"items":[{"id":1,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":"x"}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[[1,2]]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1e0,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":4294967296,"number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":"","number":1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":-1}]}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}],"time":-5}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}],"time":9223372036854775808}"#.to_string(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}],"time":1.0}"#.to_string(),
        // Unknown fields of every shape, nested.
        r#"{"x":{"y":[1,{"z":null}]},"user_id":"u","initiator":"USD","items":[{"id":1,"number":1,"w":[[]]}],"v":"\ud83d\ude00"}"#.to_string(),
        // Not objects, and not JSON.
        "null".into(), "[]".into(), "\"x\"".into(), "3".into(), "".into(), "{".into(),
        r#"{"user_id":"u"} x"#.into(),
        r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1}]"#.into(),
        // The item count's bounds, and far past them.
        many(0), many(1), many(100), many(101), many(5000),
    ];
    for body in &cases {
        agree(body.as_bytes());
    }
}

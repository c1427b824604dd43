//! `--set key=value`: one key of the config file's text overridden for one command,
//! applied to the file's TOML before it is checked, so an override goes through the
//! same checks as the file. `key` is a dotted path (`kafka.max_backlog_per_partition`);
//! `value` is read as a TOML value (`250`, `true`, `["a", "b"]`, `"text"`), and as a
//! string when it is not one (`--set ingest.listen=127.0.0.1:9000`).

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

/// The longest override taken (it comes from a command line, not trusted).
const MAX_OVERRIDE: usize = 4096;

/// `text` (a config file) with every `key=value` of `sets` applied, in order.
pub fn apply(text: &str, sets: &[String]) -> Result<String> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    let mut table: Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    for set in sets {
        one(&mut table, set).with_context(|| format!("--set {set}"))?;
    }
    Ok(toml::to_string(&table)?)
}

fn one(table: &mut Table, set: &str) -> Result<()> {
    if set.len() > MAX_OVERRIDE {
        bail!("longer than {MAX_OVERRIDE} bytes");
    }
    let Some((key, value)) = set.split_once('=') else {
        bail!("not KEY=VALUE (e.g. --set kafka.max_backlog_per_partition=5000)");
    };
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("the key {key:?} is not a dotted path like section.key");
    }
    let (last, sections) = path.split_last().expect("split gives one part at least");
    let mut at = table;
    for (i, section) in sections.iter().enumerate() {
        let entry = at
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match entry {
            Value::Table(t) => t,
            _ => bail!("{} is not a section", path[..=i].join(".")),
        };
    }
    at.insert(last.to_string(), value_of(value.trim()));
    Ok(())
}

/// `text` as a TOML value, or as a string when it is not one.
fn value_of(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_replaces_or_adds_a_key_with_a_typed_value() {
        let text = "[kafka]\ntopic = \"orders\"\n[ingest]\nlisten = \"127.0.0.1:8080\"\n";
        let sets = [
            "kafka.max_backlog_per_partition=5000".to_string(),
            "ingest.listen=127.0.0.1:9000".to_string(),
            "kafka.brokers=[\"a:9092\", \"b:9092\"]".to_string(),
            "retention.batches_hours = 2".to_string(),
        ];
        let out: Table = toml::from_str(&apply(text, &sets).unwrap()).unwrap();
        assert_eq!(
            out["kafka"]["max_backlog_per_partition"].as_integer(),
            Some(5000)
        );
        assert_eq!(out["kafka"]["topic"].as_str(), Some("orders"));
        assert_eq!(out["ingest"]["listen"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(out["kafka"]["brokers"].as_array().map(|a| a.len()), Some(2));
        assert_eq!(out["retention"]["batches_hours"].as_integer(), Some(2));
    }

    #[test]
    fn bad_sets_say_what_to_fix() {
        let text = "[kafka]\ntopic = \"orders\"\n";
        let err = |set: &str| format!("{:#}", apply(text, &[set.to_string()]).unwrap_err());
        assert!(err("kafka.topic").contains("not KEY=VALUE"));
        assert!(err("kafka..topic=x").contains("dotted path"));
        assert!(err("kafka.topic.x=1").contains("kafka.topic is not a section"));
    }
}

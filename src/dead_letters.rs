//! `dtss dead-letters`: the messages of the topic that could not be settled, as the
//! settlement transaction kept them (docs/DESIGN.md, "Messages that cannot be settled").

use anyhow::{bail, Result};
use model::Config;
use sinks::audit::DeadLetterRow;

#[derive(clap::Args)]
pub struct DeadLettersArgs {
    /// Show one in full (its bytes as hex): PARTITION:OFFSET.
    #[arg(long, value_name = "PARTITION:OFFSET", value_parser = parse_at)]
    show: Option<(i32, i64)>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_at(s: &str) -> Result<(i32, i64), String> {
    let bad = || format!("{s:?}: give PARTITION:OFFSET, e.g. 3:1042");
    let (p, o) = s.split_once(':').ok_or_else(bad)?;
    Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
}

pub async fn run(cfg: &Config, args: DeadLettersArgs) -> Result<()> {
    let pool = sinks::connect(&cfg.mysql.urls, 1)?;
    let rows = sinks::audit::dead_letters(&pool, &cfg.kafka.topic, args.show).await;
    pool.disconnect().await.ok();
    let rows = rows?;
    if let Some((p, o)) = args.show {
        let Some(d) = rows.first() else {
            bail!(
                "no dead letter at partition {p} offset {o} of {}",
                cfg.kafka.topic
            );
        };
        print_one(d, args.json);
        return Ok(());
    }
    if args.json {
        rows.iter().for_each(|d| println!("{}", json(d)));
        return Ok(());
    }
    println!(
        "{:>9} {:>10}  {:<13} {:<36} {:>6}  detail",
        "partition", "offset", "reason", "order id", "bytes"
    );
    for d in &rows {
        println!(
            "{:>9} {:>10}  {:<13} {:<36} {:>6}  {}",
            d.partition,
            d.offset,
            d.reason,
            d.order_id.as_deref().unwrap_or("-"),
            d.size,
            d.detail
        );
    }
    eprintln!("{} dead letters in {}", rows.len(), cfg.kafka.topic);
    Ok(())
}

fn json(d: &DeadLetterRow) -> serde_json::Value {
    let mut v = serde_json::to_value(d).expect("serialisable");
    v["bytes_hex"] = hex(&d.bytes).into();
    v
}

fn print_one(d: &DeadLetterRow, as_json: bool) {
    if as_json {
        println!("{}", json(d));
        return;
    }
    println!("partition    {}", d.partition);
    println!("offset       {}", d.offset);
    println!("reason       {}", d.reason);
    println!(
        "order id     {}",
        d.order_id.as_deref().unwrap_or("(unreadable)")
    );
    println!("detail       {}", d.detail);
    println!("recorded at  {} ms", d.recorded_at);
    let kept = if d.bytes.len() < d.size as usize {
        " (the first ones kept)"
    } else {
        ""
    };
    println!("bytes        {}{kept}", d.size);
    for (i, line) in d.bytes.chunks(32).enumerate() {
        println!("  {:05x}  {}", i * 32, hex(line));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_position_is_partition_colon_offset() {
        assert_eq!(super::parse_at("3:1042"), Ok((3, 1042)));
        assert!(super::parse_at("3")
            .unwrap_err()
            .contains("PARTITION:OFFSET"));
        assert!(super::parse_at("a:1").is_err());
    }
}

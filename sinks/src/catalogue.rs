use std::path::Path;

use crate::Pool;
use anyhow::{bail, Context, Result};
use model::{Currency, Decimal};
use mysql_async::prelude::*;
use serde::Deserialize;

/// One commodity as loaded into the `commodity` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CatalogueRow {
    pub id: u32,
    pub name: String,
    pub price: Decimal,
    pub currency: Currency,
    pub inventory: u32,
}

/// A deterministic catalogue of `items` commodities (ids 1..=items): prices 0.01–999.99,
/// currencies spread over `currencies`, stock 10–10,000. The same seed gives the same
/// catalogue on every machine and version (splitmix64, not a library RNG).
pub fn generate_catalogue(items: u32, seed: u64, currencies: &[Currency]) -> Vec<CatalogueRow> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (1..=items)
        .map(|id| {
            let cents = 1 + next() % 99_999;
            CatalogueRow {
                id,
                name: format!("commodity-{id}"),
                price: Decimal::new(cents as i64, 2),
                currency: currencies[(next() % currencies.len() as u64) as usize],
                inventory: 10 + (next() % 9_991) as u32,
            }
        })
        .collect()
}

/// Read `id,name,price,currency,inventory` rows (with that header line).
pub fn read_csv(path: &Path, currencies: &[Currency]) -> Result<Vec<CatalogueRow>> {
    let mut rdr = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read catalogue CSV {}", path.display()))?;
    let mut rows = vec![];
    for (i, rec) in rdr.deserialize::<CatalogueRow>().enumerate() {
        let row = rec.with_context(|| {
            format!(
                "{} record {}: expected id,name,price,currency,inventory",
                path.display(),
                i + 1
            )
        })?;
        if row.id == 0 || row.price < Decimal::ZERO || !currencies.contains(&row.currency) {
            bail!(
                "{} record {}: id must be positive, price not negative, currency configured",
                path.display(),
                i + 1
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Load the catalogue on first start: only when `commodity` is empty. Returns how
/// many rows were inserted (0 when a catalogue was already there).
pub async fn load_catalogue(
    pool: &Pool,
    csv: Option<&Path>,
    items: u32,
    seed: u64,
    currencies: &[Currency],
) -> Result<usize> {
    let mut conn = pool.get_conn().await.context("connecting to MySQL")?;
    let existing: Option<u64> = conn.query_first("SELECT COUNT(*) FROM commodity").await?;
    if existing.unwrap_or(0) > 0 {
        return Ok(0);
    }
    let rows = match csv {
        Some(p) => read_csv(p, currencies)?,
        None => generate_catalogue(items, seed, currencies),
    };
    let mut tx = conn.start_transaction(Default::default()).await?;
    for chunk in rows.chunks(1000) {
        let sql = format!(
            "INSERT INTO commodity (id, name, price, currency, inventory, initial_inventory) VALUES {}",
            vec!["(?,?,?,?,?,?)"; chunk.len()].join(",")
        );
        let params: Vec<mysql_async::Value> = chunk
            .iter()
            .flat_map(|r| {
                [
                    r.id.into(),
                    r.name.clone().into(),
                    r.price.into(),
                    r.currency.as_str().into(),
                    r.inventory.into(),
                    r.inventory.into(),
                ]
            })
            .collect();
        tx.exec_drop(sql, params)
            .await
            .context("inserting catalogue")?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_catalogue_is_deterministic_and_in_range() {
        let cur: Vec<Currency> = ["RMB", "USD"].iter().map(|c| c.parse().unwrap()).collect();
        let a = generate_catalogue(500, 7, &cur);
        assert_eq!(a, generate_catalogue(500, 7, &cur));
        assert_ne!(a, generate_catalogue(500, 8, &cur));
        assert!(a.iter().all(|r| (10..=10_000).contains(&r.inventory)));
        assert!(a
            .iter()
            .all(|r| r.price >= Decimal::new(1, 2) && r.price < Decimal::from(1000)));
        assert!(cur.iter().all(|c| a.iter().any(|r| r.currency == *c)));
    }
}

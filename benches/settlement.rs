//! Micro-benchmarks of the hot paths: order JSON parse + validate, the Kafka wire
//! format, the settlement decision for a 1,000-order batch in memory, the LOAD DATA
//! input of its results, and `paid`.
//! `cargo bench` (results under target/criterion, with plots).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use model::{decide, paid, validate_order, wire, Commodity, Currency, Decimal, RateTable};

fn currencies() -> Vec<Currency> {
    ["RMB", "USD", "JPY", "EUR"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect()
}

fn rates() -> RateTable {
    let c = currencies();
    RateTable {
        version: 1,
        rates: vec![
            (c[0], Decimal::ONE),
            (c[1], Decimal::new(712, 2)),
            (c[2], Decimal::new(48, 3)),
            (c[3], Decimal::new(780, 2)),
        ],
    }
}

fn bodies(n: usize) -> Vec<String> {
    let mut gen = harness::OrderGen::new(
        7,
        10_000,
        currencies().iter().map(|c| c.to_string()).collect(),
    );
    (0..n).map(|_| gen.next_body()).collect()
}

fn orders(n: usize) -> Vec<model::Order> {
    bodies(n)
        .iter()
        .map(|b| {
            validate_order(b.as_bytes(), &currencies())
                .unwrap()
                .accept_keyed(
                    &model::Uuid::now_v7().to_string(),
                    model::IdScheme::UserTagged,
                    model::now_ms(),
                )
        })
        .collect()
}

fn stock() -> HashMap<u32, Commodity> {
    let c = currencies();
    (1..=10_000u32)
        .map(|id| {
            (
                id,
                Commodity {
                    price: Decimal::new(100 + id as i64 * 7 % 99_900, 2),
                    currency: c[id as usize % 4],
                    inventory: 10 + id * 13 % 9_990,
                },
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cur = currencies();
    let bodies = bodies(1000);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse+validate order JSON", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            black_box(validate_order(bodies[i].as_bytes(), &cur).unwrap())
        })
    });
    let order = orders(1).pop().unwrap();
    let bytes = wire::encode(&order);
    g.bench_function("wire encode", |b| {
        b.iter(|| black_box(wire::encode(black_box(&order))))
    });
    g.bench_function("wire decode", |b| {
        b.iter(|| black_box(wire::decode(black_box(&bytes)).unwrap()))
    });
    g.finish();

    let batch = orders(1000);
    let table = rates();
    let mut g = c.benchmark_group("settle");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decide a 1000-order batch", |b| {
        b.iter_batched(
            stock,
            |mut s| {
                for o in &batch {
                    black_box(decide(o, &mut s, &table).unwrap());
                }
            },
            BatchSize::LargeInput,
        )
    });
    let settling: Vec<sinks::ReadyOrder> = batch
        .iter()
        .enumerate()
        .map(|(i, o)| sinks::ReadyOrder {
            offset: i as i64,
            epoch: 1,
            order: o.clone(),
            rates: Arc::new(table.clone()),
        })
        .collect();
    let todo: Vec<&sinks::ReadyOrder> = settling.iter().collect();
    let mut s = stock();
    let decisions: Vec<model::Decision> = batch
        .iter()
        .map(|o| decide(o, &mut s, &table).unwrap())
        .collect();
    g.bench_function(
        "result rows of a 1000-order batch as LOAD DATA input",
        |b| b.iter(|| black_box(sinks::results_tsv(&todo, &decisions, 0, 1))),
    );
    g.finish();

    let lines = [
        (Decimal::new(1999, 2), 3, cur[1]),
        (Decimal::new(50000, 2), 1, cur[2]),
        (Decimal::new(1250, 2), 5, cur[3]),
    ];
    c.bench_function("paid, 3 lines", |b| {
        b.iter(|| black_box(paid(lines.iter().copied(), cur[0], &table).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The contended workload (`dtss bench --contended`: a tenth of the orders on ten
//! commodities whose stock runs out) settles exactly as the rule says in the recorded
//! order: `dtss check --in-order` decides every result again, in (epoch, partition,
//! offset) order from the initial stock, and finds each recorded decision.

mod common;

use common::{Cluster, Spec};

/// 200 commodities; the ten hot ones (ids 1–10) hold 150 units each, the rest plenty.
fn catalogue() -> String {
    let mut csv = String::from("id,name,price,currency,inventory\n");
    for id in 1..=200u32 {
        let inventory = if id <= 10 { 150 } else { 1_000_000 };
        csv.push_str(&format!(
            "{id},item-{id},{}.50,EUR,{inventory}\n",
            id % 7 + 1
        ));
    }
    csv
}

#[test]
fn a_contended_run_on_one_partition_is_decided_in_place_order() {
    let csv = catalogue();
    let spec = Spec {
        workers: 1,
        catalogue: Some(&csv),
        items: 200,
        ..Spec::default()
    };
    let c = Cluster::start("contended", spec);
    // 20,000 orders: about 2,000 take a hot commodity, some 600 units of each.
    c.run(&[
        "bench",
        "--contended",
        "--rate",
        "2000",
        "--duration",
        "10",
        "--ramp",
        "1",
    ])
    .unwrap_or_else(|e| panic!("dtss bench failed:\n{e}"));
    let emptied = c.count("SELECT COUNT(*) FROM commodity WHERE id <= 10 AND inventory = 0");
    let refused = c.count("SELECT COUNT(*) FROM result WHERE reason = 'insufficient_inventory'");
    let taken = c.count("SELECT COUNT(*) FROM result WHERE success");
    assert!(
        emptied >= 8,
        "only {emptied} of the ten hot commodities ran out"
    );
    assert!(refused > 0 && taken > 0, "refused {refused}, taken {taken}");
    let checked = c
        .run(&["check", "--in-order"])
        .unwrap_or_else(|e| panic!("dtss check --in-order failed:\n{e}"));
    assert!(checked.contains("PASS decisions:"), "{checked}");
    eprintln!("{emptied} hot commodities emptied, {refused} refused, {taken} taken\n{checked}");
}

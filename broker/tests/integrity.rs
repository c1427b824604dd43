//! What a producer sends is checked before it is written: raw Produce requests over TCP
//! with a wrong CRC, a `lastOffsetDelta` that lies, or a sequence another batch took
//! are refused with Kafka's error codes, and the log's offsets do not move.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use dtss_broker::batch::{build, produce_answer, produce_request, reseal};
use dtss_broker::Broker;

const CORRUPT_MESSAGE: i16 = 2;
const OUT_OF_ORDER_SEQUENCE: i16 = 45;

/// One Produce of `records` to partition 0 of "orders": the answer's error code and
/// base offset.
fn produce(addr: SocketAddr, records: &[u8]) -> (i16, i64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&produce_request("orders", 0, records)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    produce_answer(&answer, "orders").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_hijacking_batches_are_refused_over_the_wire() {
    let dir = std::env::temp_dir().join(format!("dtss-broker-integrity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::open(&dir, "orders", 1).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker.clone().serve(listener, addr));
    let send = move |records: Vec<u8>| tokio::task::spawn_blocking(move || produce(addr, &records));

    assert_eq!(send(build(&[b"first"], 77, 0)).await.unwrap(), (0, 0));
    let mut bad_crc = build(&[b"second"], -1, 0);
    let at = bad_crc.len() - 3;
    bad_crc[at] ^= 0x01;
    assert_eq!(send(bad_crc).await.unwrap().0, CORRUPT_MESSAGE);
    let mut lying = build(&[b"second"], -1, 0);
    lying[23..27].copy_from_slice(&1_000_000i32.to_be_bytes());
    reseal(&mut lying);
    assert_eq!(send(lying).await.unwrap().0, CORRUPT_MESSAGE);
    assert_eq!(broker.offsets()[0].1, 1, "nothing of them was written");

    // Producer 77's next sequence, taken by someone else: its own batch is refused, not
    // acknowledged as a retry of the forged one.
    assert_eq!(send(build(&[b"forged"], 77, 1)).await.unwrap(), (0, 1));
    let real = send(build(&[b"real"], 77, 1)).await.unwrap();
    assert_eq!(real.0, OUT_OF_ORDER_SEQUENCE);
    // The offsets did not jump: the next good batch lands right after.
    assert_eq!(send(build(&[b"next"], -1, 0)).await.unwrap(), (0, 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

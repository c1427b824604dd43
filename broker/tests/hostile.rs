//! Clients that do not play by the rules: garbage frames, huge length prefixes, short
//! frames, a fetch naming one partition a thousand times, idle and surplus connections.
//! The broker answers or closes the connection, and goes on serving. And every API
//! version that ApiVersions advertises answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use dtss_broker::{batch, Broker, Limits};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

async fn start(name: &str, limits: Limits) -> SocketAddr {
    let dir = std::env::temp_dir().join(format!("dtss-broker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::open(&dir, "orders", 2).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker.serve_with(listener, addr, limits));
    addr
}

/// A request frame: its length, the header of `api` v`version` (correlation id 42),
/// then `payload`.
fn frame(api: ApiKey, version: i16, payload: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut body, api.request_header_version(version))
        .unwrap();
    body.extend_from_slice(payload);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Send `request` as version `version` of `api`; the answer.
fn call(s: &mut TcpStream, api: ApiKey, version: i16, request: RequestKind) -> ResponseKind {
    let mut payload = BytesMut::new();
    request.encode(&mut payload, version).unwrap();
    s.write_all(&frame(api, version, &payload)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("{api:?} v{version}: no answer: {e}"));
    let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    let mut buf = bytes::Bytes::from(answer);
    let header = ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    ResponseKind::decode(api, &mut buf, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version}: the answer does not decode: {e}"))
}

/// Whether the broker answers ApiVersions on a new connection.
fn serves(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let req = RequestKind::ApiVersions(ApiVersionsRequest::default());
    matches!(
        call(&mut s, ApiKey::ApiVersions, 0, req),
        ResponseKind::ApiVersions(_)
    )
}

/// Whether the broker closes `s` within `within`.
fn closes(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_)) && {
        // A timeout is an error too: tell them apart.
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A request of `api` v`version` whose `fields` are followed by an array count of
/// 2^31 − 1 and nothing else.
fn count_bomb(api: ApiKey, version: i16, fields: &[u8]) -> Vec<u8> {
    let mut payload = fields.to_vec();
    payload.extend_from_slice(&i32::MAX.to_be_bytes());
    frame(api, version, &payload)
}

fn request_for(api: ApiKey) -> RequestKind {
    let topic = || TopicName(StrBytes::from_static_str("orders"));
    match api {
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20)])]),
        ),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(
            vec![ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])],
        )),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("group")),
        ),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        other => panic!("{other:?} is advertised but not known to this test"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_api_version_answers() {
    let addr = start("versions", Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let req = RequestKind::ApiVersions(ApiVersionsRequest::default());
        let ResponseKind::ApiVersions(versions) = call(&mut s, ApiKey::ApiVersions, 0, req) else {
            panic!("not an ApiVersions answer");
        };
        let mut n = 0;
        for v in &versions.api_keys {
            let api = ApiKey::try_from(v.api_key).unwrap();
            for version in v.min_version..=v.max_version {
                // A connection each: a failed answer closes it.
                let mut s = TcpStream::connect(addr).unwrap();
                call(&mut s, api, version, request_for(api));
                n += 1;
            }
        }
        assert!(n > 30, "{n} versions");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_their_connection_and_the_broker_serves_on() {
    let addr = start("frames", Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("a 2 GiB length prefix", i32::MAX.to_be_bytes().to_vec()),
            ("a negative length", (-5i32).to_be_bytes().to_vec()),
            (
                "a short ApiVersions of version 9",
                vec![0, 0, 0, 5, 0, 18, 0, 9, 0],
            ),
            ("garbage", {
                let mut g = 200i32.to_be_bytes().to_vec();
                g.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
                g
            }),
            (
                "an unknown API key",
                vec![0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1],
            ),
            // transactional id null, acks -1, timeout 1000, then the topics' count.
            (
                "a Produce claiming 2^31 - 1 topics",
                count_bomb(ApiKey::Produce, 3, &[0xff, 0xff, 0xff, 0xff, 0, 0, 3, 0xe8]),
            ),
            // replica id, max wait, min bytes, max bytes, isolation level: the count.
            (
                "a Fetch claiming 2^31 - 1 topics",
                count_bomb(
                    ApiKey::Fetch,
                    4,
                    &[
                        0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0,
                    ],
                ),
            ),
            (
                "a Metadata claiming 2^31 - 1 topics",
                count_bomb(ApiKey::Metadata, 1, &[]),
            ),
            (
                "a Produce of an unserved version",
                vec![0, 0, 0, 8, 0, 0, 0, 99, 0, 0, 0, 1],
            ),
        ];
        for (what, frame) in frames {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&frame).unwrap();
            assert!(closes(&mut s, Duration::from_secs(5)), "{what}: closed");
            assert!(serves(addr), "{what}: the broker serves on");
        }
        // A length claimed and its bytes never sent: the memory is not taken up front,
        // and other clients are served meanwhile.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(&(16i32 << 20).to_be_bytes()).unwrap();
        assert!(serves(addr));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_is_bounded_by_max_bytes_and_names_a_partition_once() {
    let addr = start("fetch", Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        // 40 batches of ~1 KiB in partition 0.
        for i in 0..40 {
            let value = vec![b'x'; 1000 + i];
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&batch::produce_request(
                "orders",
                0,
                &batch::build(&[&value], -1, 0),
            ))
            .unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
        }
        let partitions: Vec<FetchPartition> = (0..1000)
            .map(|_| {
                FetchPartition::default()
                    .with_partition(0)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(8 << 10)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(partitions)]);
        let mut s = TcpStream::connect(addr).unwrap();
        let ResponseKind::Fetch(res) = call(&mut s, ApiKey::Fetch, 11, RequestKind::Fetch(req))
        else {
            panic!("not a Fetch answer");
        };
        let parts = &res.responses[0].partitions;
        assert_eq!(
            parts.len(),
            1,
            "the partition named 1,000 times is answered once"
        );
        let bytes = parts[0].records.as_ref().map_or(0, |r| r.remaining());
        assert!(
            bytes > 0 && bytes <= 8 << 10,
            "{bytes} bytes for max_bytes 8 KiB"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_surplus_connections_are_closed() {
    let limits = Limits {
        idle: Duration::from_millis(300),
        request: Duration::from_millis(300),
        connections: 3,
    };
    let addr = start("limits", limits).await;
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        assert!(
            closes(&mut idle, Duration::from_secs(5)),
            "an idle connection is closed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // A request begun and never finished.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(&[0, 0, 1, 0, 0, 18]).unwrap();
        assert!(
            closes(&mut slow, Duration::from_secs(5)),
            "a slow request is cut off"
        );
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut surplus = TcpStream::connect(addr).unwrap();
        assert!(
            closes(&mut surplus, Duration::from_secs(1)),
            "past the cap: closed"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(100));
        assert!(serves(addr));
    })
    .await
    .unwrap();
}

//! What a Kafka client sends the embedded broker: a request frame decoded (an error,
//! never a panic or a huge allocation), and a produced record batch checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut body = bytes::Bytes::copy_from_slice(data);
    let _ = broker::decode_request(&mut body);
    if let Ok(len) = broker::batch::verify(data) {
        assert!(len <= data.len());
    }
});

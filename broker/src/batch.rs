//! Kafka's v2 record batch, as the broker checks one before it writes it: nothing a
//! producer sends is trusted. The framing (`header`), then `check`: the CRC32C over
//! everything after the CRC field, the record count against `lastOffsetDelta`, and,
//! for an uncompressed batch, every record's length and offset delta.
//!
//! ```text
//!  0 baseOffset i64 │ 8 batchLength i32 │ 12 leaderEpoch i32 │ 16 magic i8 (2) │ 17 crc u32
//! 21 attributes i16 │ 23 lastOffsetDelta i32 │ 27 baseTimestamp i64 │ 35 maxTimestamp i64
//! 43 producerId i64 │ 51 producerEpoch i16 │ 53 baseSequence i32 │ 57 records count i32
//! 61 records: each a varint length, then attributes i8, timestampDelta varlong,
//!    offsetDelta varint, key, value, headers
//! ```

/// The fixed part of a batch, before its records.
pub(crate) const HEADER: usize = 61;

/// The fields of a batch header that the broker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The whole batch's length in bytes.
    pub len: usize,
    pub last_delta: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_seq: i32,
    pub crc: u32,
}

impl Header {
    /// The sequence number of the batch's last record.
    pub fn last_seq(&self) -> i32 {
        self.base_seq.wrapping_add(self.last_delta)
    }
}

pub(crate) fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The header of the batch at the start of `b`, if a whole v2 batch is there.
pub(crate) fn header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER || b[16] != 2 {
        return None;
    }
    let len = 12 + usize::try_from(be_i32(b, 8)).ok()?;
    let last_delta = be_i32(b, 23);
    if len < HEADER || len > b.len() || last_delta < 0 {
        return None;
    }
    Some(Header {
        len,
        last_delta,
        producer_id: be_i64(b, 43),
        producer_epoch: be_i16(b, 51),
        base_seq: be_i32(b, 53),
        crc: u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")),
    })
}

/// The length of the whole v2 batch at the start of `b` if it passes every check (the
/// framing, then `check`), or what is wrong with it.
pub fn verify(b: &[u8]) -> Result<usize, String> {
    let h = header(b).ok_or("not a whole v2 record batch")?;
    check(b, &h)?;
    Ok(h.len)
}

/// What is wrong with a batch whose framing reads (`header`), if anything.
pub(crate) fn check(batch: &[u8], h: &Header) -> Result<(), String> {
    let batch = &batch[..h.len];
    let crc = crc32c::crc32c(&batch[21..]);
    if crc != h.crc {
        return Err(format!(
            "CRC32C {crc:#010x}, the header says {:#010x}",
            h.crc
        ));
    }
    let count = be_i32(batch, 57);
    if i64::from(count) != i64::from(h.last_delta) + 1 {
        return Err(format!(
            "{count} records, but lastOffsetDelta {} says {}",
            h.last_delta,
            i64::from(h.last_delta) + 1
        ));
    }
    let records = &batch[HEADER..];
    if be_i16(batch, 21) & 0x07 != 0 {
        // Compressed: the records cannot be walked without inflating them; a record
        // takes at least a byte even so.
        if count as usize > records.len() {
            return Err(format!(
                "{count} records in {} compressed bytes",
                records.len()
            ));
        }
        return Ok(());
    }
    walk_records(records, count)
}

/// The uncompressed `records` hold exactly `count` records, the i-th at offset delta i.
fn walk_records(records: &[u8], count: i32) -> Result<(), String> {
    let mut at = 0;
    for i in 0..count {
        let bad = |what: &str| format!("record {i} of {count}: {what}");
        let (len, n) = varint(&records[at..]).ok_or_else(|| bad("unreadable length"))?;
        at += n;
        let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
        let body = records
            .get(at..at + len)
            .ok_or_else(|| bad("longer than the batch"))?;
        // attributes, timestampDelta, offsetDelta
        let (_, t) = body
            .get(1..)
            .and_then(varint)
            .ok_or_else(|| bad("unreadable timestamp"))?;
        let (delta, _) = body
            .get(1 + t..)
            .and_then(varint)
            .ok_or_else(|| bad("unreadable offset delta"))?;
        if delta != i64::from(i) {
            return Err(bad(&format!("offset delta {delta}")));
        }
        at += len;
    }
    if at != records.len() {
        return Err(format!(
            "{} bytes after the last record",
            records.len() - at
        ));
    }
    Ok(())
}

/// A zigzag varint (up to 10 bytes) at the start of `b`: its value and its length.
fn varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((v >> 1) as i64) ^ -((v & 1) as i64), i + 1));
        }
    }
    None
}

/// A v2 batch of uncompressed records `values` from `producer` (-1: not idempotent)
/// at sequence `seq`, its CRC filled in: what a raw producer sends (tests and tools).
pub fn build(values: &[&[u8]], producer: i64, seq: i32) -> Vec<u8> {
    fn zigzag(v: i64, out: &mut Vec<u8>) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        while u >= 0x80 {
            out.push((u as u8) | 0x80);
            u >>= 7;
        }
        out.push(u as u8);
    }
    let mut records = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        zigzag(0, &mut body); // timestamp delta
        zigzag(i as i64, &mut body); // offset delta
        zigzag(-1, &mut body); // no key
        zigzag(value.len() as i64, &mut body);
        body.extend_from_slice(value);
        zigzag(0, &mut body); // no headers
        zigzag(body.len() as i64, &mut records);
        records.extend_from_slice(&body);
    }
    let n = values.len() as i32;
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER - 12 + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes()); // the CRC, below
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&producer.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&records);
    reseal(&mut b);
    b
}

/// A Produce request (v3, acks=all) of `records` to `partition` of `topic`, framed
/// (its length in front): what a raw producer sends, for tests and tools.
pub fn produce_request(topic: &str, partition: i32, records: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // Produce
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(b"raw");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks=all
    body.extend_from_slice(&5000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(records.len() as i32).to_be_bytes());
    body.extend_from_slice(records);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// The error code and base offset in the answer (without its length) to a
/// `produce_request` for `topic`.
pub fn produce_answer(answer: &[u8], topic: &str) -> Option<(i16, i64)> {
    // correlation id, 1 topic, its name, 1 partition, its index: then the error code.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let code = i16::from_be_bytes(answer.get(at..at + 2)?.try_into().ok()?);
    let offset = i64::from_be_bytes(answer.get(at + 2..at + 10)?.try_into().ok()?);
    Some((code, offset))
}

/// Write the CRC of a batch whose bytes were changed.
pub fn reseal(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_batch_passes() {
        let b = build(&[b"one", b"two", b""], 7, 0);
        let h = header(&b).unwrap();
        assert_eq!(
            (h.len, h.last_delta, h.producer_id, h.last_seq()),
            (b.len(), 2, 7, 2)
        );
        assert_eq!(check(&b, &h), Ok(()));
    }

    #[test]
    fn a_wrong_crc_is_refused() {
        let mut b = build(&[b"one"], 7, 0);
        let last = b.len() - 2;
        b[last] ^= 1; // a bit of the value flipped in flight
        let e = check(&b, &header(&b).unwrap()).unwrap_err();
        assert!(e.contains("CRC32C"), "{e}");
    }

    #[test]
    fn a_last_offset_delta_that_lies_is_refused() {
        let mut b = build(&[b"one", b"two"], -1, 0);
        b[23..27].copy_from_slice(&1_000_000i32.to_be_bytes());
        reseal(&mut b);
        let e = check(&b, &header(&b).unwrap()).unwrap_err();
        assert!(e.contains("lastOffsetDelta 1000000"), "{e}");
        // The count agreeing with the lie: the records themselves say otherwise.
        b[57..61].copy_from_slice(&1_000_001i32.to_be_bytes());
        reseal(&mut b);
        let e = check(&b, &header(&b).unwrap()).unwrap_err();
        assert!(e.contains("record 2 of 1000001"), "{e}");
    }

    #[test]
    fn records_out_of_order_or_trailing_bytes_are_refused() {
        let mut b = build(&[b"one", b"two"], -1, 0);
        b.push(0);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        reseal(&mut b);
        let e = check(&b, &header(&b).unwrap()).unwrap_err();
        assert!(e.contains("1 bytes after the last record"), "{e}");
    }

    #[test]
    fn varints_are_zigzag() {
        assert_eq!(varint(&[0x00]), Some((0, 1)));
        assert_eq!(varint(&[0x01]), Some((-1, 1)));
        assert_eq!(varint(&[0x02]), Some((1, 1)));
        assert_eq!(varint(&[0xac, 0x02]), Some((150, 2)));
        assert_eq!(varint(&[0x80]), None);
    }
}

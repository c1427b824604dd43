//! One partition's log: record batches (Kafka's v2 format, kept as the producer sent
//! them, with the base offset filled in) appended to segment files and held in memory
//! for fetches.
//!
//! Two ends: the log end (the offset the next message gets) and the synced end (every
//! message before it is on disk: `fdatasync` of its segment, and of the folder for a new
//! segment). Producers are answered, and consumers served, only up to the synced end
//! (Kafka's high watermark), so neither a crash of the broker process nor of the machine
//! loses an acknowledged message, and nothing is settled that the disk may not hold.
//! The sync itself runs outside the log's lock (`Broker::durable`: one `fdatasync`
//! covers every append waiting at that moment). How far the log is synced is recorded
//! in `synced` beside the segments.
//!
//! A write or sync that fails cuts the segment back to its synced length (no torn bytes
//! stay behind for later appends to follow) and refuses appends for a moment; a torn
//! batch at the end of the last segment (a crash mid-write) is cut off when the log is
//! opened again.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};

use crate::batch::{be_i64, check, header, Header};

/// A new segment file starts once the current one holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// How many recent batches per producer are remembered to recognise a retried one.
const RECENT: usize = 5;
/// After a failed write or sync, appends are refused this long before one is tried again.
const REFUSE_FOR: Duration = Duration::from_secs(1);
/// The file beside the segments that records how far the log is synced.
const SYNCED_FILE: &str = "synced";

/// Why a produce was refused, as a Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    CorruptMessage = 2,
    OutOfOrderSequence = 45,
    /// The disk refused a write or a sync (full, failing): retry later.
    StorageError = 56,
}

struct Batch {
    base: i64,
    last: i64,
    bytes: Bytes,
}

struct Segment {
    base: i64,
    path: PathBuf,
}

/// Idempotent producer state: the sequence of the last batch and the recent batches,
/// so a retried batch is answered with its original offset instead of written twice.
/// A retry is the same producer id, epoch, first and last sequence, and CRC: a batch
/// that takes a sequence another batch had is not a retry of it, and is refused.
struct Producer {
    epoch: i16,
    last_seq: i32,
    recent: VecDeque<Sent>,
}

/// A batch a producer wrote: its sequence numbers, its CRC and its first offset.
#[derive(Clone, Copy)]
struct Sent {
    base_seq: i32,
    last_seq: i32,
    crc: u32,
    offset: i64,
}

impl Sent {
    fn is_retry(&self, h: &Header) -> bool {
        (self.base_seq, self.last_seq, self.crc) == (h.base_seq, h.last_seq(), h.crc)
    }
}

pub struct PartitionLog {
    dir: PathBuf,
    batches: VecDeque<Batch>,
    segments: VecDeque<Segment>,
    file: File,
    file_len: u64,
    end: i64,
    producers: HashMap<i64, Producer>,
    /// Whether appends wait for `fdatasync` (false: the synced end follows the log end
    /// at once, and a machine crash loses what the page cache held).
    fsync: bool,
    synced: Synced,
    /// The synced end at each time unsynced appends were cut off (a failed sync), oldest
    /// first: a waiter whose append was cut off must not take a later append at the same
    /// offsets for its own.
    cuts: Vec<i64>,
    /// Why appends are refused, and until when.
    refusing: Option<(String, Instant)>,
    record: File,
}

/// How far the log is on disk: every message before `end`, which is `len` bytes into
/// the segment starting at `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synced {
    pub end: i64,
    pub segment: i64,
    pub len: u64,
}

/// What one sync covers: the log end and the active segment's length when it started,
/// and a handle on that segment's file.
pub struct SyncJob {
    pub file: File,
    pub upto: Synced,
}

/// Remember that `h`'s producer wrote the batch at `base` (as the log is written, and
/// again as it is read back on open, so a producer's retry after a broker crash is
/// still recognised).
fn note_producer(producers: &mut HashMap<i64, Producer>, h: &Header, base: i64) {
    if h.producer_id < 0 {
        return;
    }
    let p = producers.entry(h.producer_id).or_insert(Producer {
        epoch: h.producer_epoch,
        last_seq: -1,
        recent: VecDeque::new(),
    });
    if p.epoch != h.producer_epoch {
        p.epoch = h.producer_epoch;
        p.recent.clear();
    }
    p.last_seq = h.last_seq();
    p.recent.push_back(Sent {
        base_seq: h.base_seq,
        last_seq: h.last_seq(),
        crc: h.crc,
        offset: base,
    });
    if p.recent.len() > RECENT {
        p.recent.pop_front();
    }
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Make a folder's entries (a new file in it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the folder {}", dir.display()))
}

impl PartitionLog {
    /// Open (or create) the log in `dir`, reading back every segment; `fsync`: whether
    /// appends wait for the disk. Whatever was read back is synced before it is served.
    pub fn open(dir: &Path, fsync: bool) -> Result<PartitionLog> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut bases: Vec<i64> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut batches = VecDeque::new();
        let mut segments = VecDeque::new();
        let mut producers = HashMap::new();
        let mut end = bases[0];
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base);
            let mut data = Vec::new();
            if path.exists() {
                File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .with_context(|| format!("reading {}", path.display()))?;
            }
            end = end.max(base);
            let data = Bytes::from(data);
            let mut at = 0;
            while let Some(h) = header(&data[at..]).filter(|h| check(&data[at..], h).is_ok()) {
                let first = be_i64(&data, at);
                let last = first + h.last_delta as i64;
                note_producer(&mut producers, &h, first);
                batches.push_back(Batch {
                    base: first,
                    last,
                    bytes: data.slice(at..at + h.len),
                });
                end = last + 1;
                at += h.len;
            }
            if at < data.len() {
                anyhow::ensure!(
                    i == bases.len() - 1,
                    "{} is damaged at byte {at} and is not the last segment: move the broker's \
                     log away to start it empty (orders not yet settled are lost then)",
                    path.display()
                );
                tracing::warn!(
                    "{}: cutting off a torn batch at byte {at} ({} bytes) left by a crash",
                    path.display(),
                    data.len() - at
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(at as u64))
                    .with_context(|| format!("truncating {}", path.display()))?;
            }
            segments.push_back(Segment { base, path });
        }
        let active = segments.back().expect("at least one segment");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active.path)
            .with_context(|| format!("opening {}", active.path.display()))?;
        let file_len = file.metadata()?.len();
        file.sync_data()
            .with_context(|| format!("syncing {}", active.path.display()))?;
        sync_dir(dir)?;
        let record_path = dir.join(SYNCED_FILE);
        let record = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&record_path)
            .with_context(|| format!("opening {}", record_path.display()))?;
        let synced = Synced {
            end,
            segment: active.base,
            len: file_len,
        };
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            batches,
            segments,
            file,
            file_len,
            end,
            producers,
            fsync,
            synced,
            cuts: Vec::new(),
            refusing: None,
            record,
        };
        log.write_record();
        Ok(log)
    }

    /// How many times unsynced appends were cut off.
    pub fn cuts(&self) -> usize {
        self.cuts.len()
    }

    /// Whether an append ending at `end`, made when `cuts` cuts had happened, is on disk:
    /// Some(true) once synced, Some(false) when a cut took it, None while it waits.
    pub fn is_durable(&self, end: i64, cuts: usize) -> Option<bool> {
        match self.cuts.get(cuts) {
            Some(&kept) => Some(end <= kept),
            None => (self.synced.end >= end).then_some(true),
        }
    }

    /// Why appends are refused now, if they are.
    pub fn refusing(&self) -> Option<&str> {
        self.refusing
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(why, _)| why.as_str())
    }

    /// What a sync must cover now; None when everything appended is synced.
    pub fn sync_job(&self) -> Result<Option<SyncJob>> {
        if self.synced.end >= self.end {
            return Ok(None);
        }
        let file = self.file.try_clone().context("a handle on the segment")?;
        let upto = Synced {
            end: self.end,
            segment: self.segments.back().expect("a segment").base,
            len: self.file_len,
        };
        Ok(Some(SyncJob { file, upto }))
    }

    /// A sync that covered `upto` completed.
    pub fn synced_to(&mut self, upto: Synced) {
        if upto.end > self.synced.end {
            self.synced = upto;
            self.write_record();
        }
    }

    /// A sync failed: what was appended since the last good one may not be on disk, so it
    /// is cut off (the segment back to its synced length, the log read again from disk)
    /// and appends are refused for a moment.
    pub fn sync_failed(&mut self, e: &std::io::Error) -> Result<()> {
        let why = format!("syncing the log in {}: {e}", self.dir.display());
        tracing::error!("{why}: cutting it back to offset {}", self.synced.end);
        let seg = segment_path(&self.dir, self.synced.segment);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .and_then(|f| f.set_len(self.synced.len))
            .with_context(|| format!("cutting {} back", seg.display()))?;
        for later in self
            .segments
            .iter()
            .filter(|s| s.base > self.synced.segment)
        {
            std::fs::remove_file(&later.path)
                .with_context(|| format!("deleting {}", later.path.display()))?;
        }
        let mut cuts = std::mem::take(&mut self.cuts);
        cuts.push(self.synced.end);
        *self = PartitionLog::open(&self.dir, self.fsync)?;
        self.cuts = cuts;
        self.refuse(why);
        Ok(())
    }

    fn refuse(&mut self, why: String) {
        self.refusing = Some((why, Instant::now() + REFUSE_FOR));
    }

    /// Record how far the log is synced (read by whoever needs to know what a machine
    /// crash would have kept: `segment len end`, fixed width, written in place).
    fn write_record(&self) {
        let line = format!(
            "{:020} {:020} {:020}\n",
            self.synced.segment, self.synced.len, self.synced.end
        );
        if let Err(e) = self.record.write_at(line.as_bytes(), 0) {
            tracing::warn!("recording the synced end in {}: {e}", self.dir.display());
        }
    }

    /// Make the log in `dir` empty, its next offset `offset`: every segment deleted, an
    /// empty one named for `offset` in their place.
    pub fn restart_at(dir: &Path, offset: i64) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = segment_path(dir, offset);
        File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".log") && e.path() != path {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("deleting {}", e.path().display()))?;
            }
        }
        sync_dir(dir)
    }

    /// The first offset still held.
    pub fn start(&self) -> i64 {
        self.batches.front().map_or(self.end, |b| b.base)
    }

    /// The offset the next message will get.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// The high watermark: every message before it is on disk, answered and served.
    pub fn high_watermark(&self) -> i64 {
        self.synced.end
    }

    /// Append the batches in `records`; returns the offset of the first message.
    pub fn append(&mut self, records: &[u8]) -> Result<i64, Refused> {
        // Check every batch before writing any.
        let mut headers = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let h = header(&records[at..]).ok_or(Refused::CorruptMessage)?;
            if let Err(e) = check(&records[at..], &h) {
                tracing::warn!(
                    "refusing a produced batch (producer {}, sequence {}): {e}",
                    h.producer_id,
                    h.base_seq
                );
                return Err(Refused::CorruptMessage);
            }
            at += h.len;
            headers.push(h);
        }
        let first = headers.first().ok_or(Refused::CorruptMessage)?;
        if let Some(offset) = self.sequence(first)? {
            return Ok(offset); // a retry of a batch already written
        }
        if self.refusing().is_some() {
            return Err(Refused::StorageError);
        }
        let base = self.end;
        let mut buf = BytesMut::from(records);
        let mut at = 0;
        let mut next = base;
        let mut spans = Vec::with_capacity(headers.len());
        for h in &headers {
            buf[at..at + 8].copy_from_slice(&next.to_be_bytes());
            buf[at + 12..at + 16].copy_from_slice(&0i32.to_be_bytes()); // leader epoch
            spans.push((next, next + h.last_delta as i64, at, h.len));
            next += h.last_delta as i64 + 1;
            at += h.len;
        }
        if let Err(e) = self.write(&buf) {
            let why = format!("writing the broker log in {}: {e:#}", self.dir.display());
            tracing::error!("{why}: refusing appends for {REFUSE_FOR:?}");
            self.refuse(why);
            return Err(Refused::StorageError);
        }
        let buf = buf.freeze();
        for (b, l, at, len) in spans {
            self.batches.push_back(Batch {
                base: b,
                last: l,
                bytes: buf.slice(at..at + len),
            });
        }
        self.end = next;
        for h in &headers {
            note_producer(&mut self.producers, h, base);
        }
        if !self.fsync {
            self.synced_to(Synced {
                end: next,
                segment: self.segments.back().expect("a segment").base,
                len: self.file_len,
            });
        }
        Ok(base)
    }

    /// Where `first` (a request's first batch) stands in its producer's sequence: Some
    /// offset for a retry of a batch written, None for the next batch, or refused.
    fn sequence(&self, first: &Header) -> Result<Option<i64>, Refused> {
        let Some(p) = self.producers.get(&first.producer_id) else {
            return Ok(None);
        };
        if first.producer_id < 0 || p.epoch != first.producer_epoch {
            return Ok(None);
        }
        if let Some(sent) = p.recent.iter().find(|s| s.is_retry(first)) {
            return Ok(Some(sent.offset));
        }
        if first.base_seq != p.last_seq.wrapping_add(1) {
            tracing::warn!(
                "refusing a batch of producer {} at sequence {}, after {}: out of order, or a \
                 sequence another batch took",
                first.producer_id,
                first.base_seq,
                p.last_seq
            );
            return Err(Refused::OutOfOrderSequence);
        }
        Ok(None)
    }

    /// Write `buf` at the end of the active segment, or of a new one; on any error the
    /// segment is cut back to where it ended, so no torn bytes stay behind.
    fn write(&mut self, buf: &[u8]) -> Result<()> {
        if self.file_len >= SEGMENT_BYTES {
            self.roll()?;
        }
        if let Err(e) = self.file.write_all(buf) {
            self.file
                .set_len(self.file_len)
                .context("cutting a torn write back")?;
            return Err(e.into());
        }
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Start a new segment at the log end, once the active one is synced whole (so the
    /// synced end never lies in a segment before the active one).
    fn roll(&mut self) -> Result<()> {
        let old = self.segments.back().expect("a segment").base;
        self.file.sync_data().context("syncing a full segment")?;
        self.synced_to(Synced {
            end: self.end,
            segment: old,
            len: self.file_len,
        });
        let path = segment_path(&self.dir, self.end);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.file_len = 0;
        self.segments.push_back(Segment {
            base: self.end,
            path,
        });
        self.synced_to(Synced {
            end: self.end,
            segment: self.end,
            len: 0,
        });
        Ok(())
    }

    /// Whole batches from the one holding `offset` up to `max_bytes` (the first even if
    /// larger, when `at_least_one`); empty at the end of the log; `None` when `offset`
    /// is outside it.
    pub fn read(&self, offset: i64, max_bytes: usize, at_least_one: bool) -> Option<Bytes> {
        let mut out = BytesMut::new();
        for b in self.batches_from(offset, max_bytes, at_least_one)? {
            out.extend_from_slice(b);
        }
        Some(out.freeze())
    }

    /// How many bytes `read` would return, without copying them.
    pub fn readable(&self, offset: i64, max_bytes: usize) -> Option<usize> {
        Some(
            self.batches_from(offset, max_bytes, true)?
                .map(Bytes::len)
                .sum(),
        )
    }

    fn batches_from(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Option<impl Iterator<Item = &Bytes>> {
        if offset < self.start() || offset > self.end {
            return None;
        }
        let from = self.batches.partition_point(|b| b.last < offset);
        let synced = self.synced.end;
        let mut len = 0;
        Some(
            self.batches
                .range(from..)
                .take_while(move |b| b.last < synced)
                .map(|b| &b.bytes)
                .take_while(move |b| {
                    let take = (at_least_one && len == 0) || len + b.len() <= max_bytes;
                    len += b.len();
                    take
                }),
        )
    }

    /// Forget whole segments that end at or before `settled` (every message before it
    /// is settled): delete their files and drop their batches from memory.
    pub fn trim(&mut self, settled: i64) -> Result<()> {
        while self.segments.len() > 1 && self.segments[1].base <= settled {
            let old = self.segments.pop_front().expect("len > 1");
            let next = self.segments[0].base;
            while self.batches.front().is_some_and(|b| b.base < next) {
                self.batches.pop_front();
            }
            std::fs::remove_file(&old.path)
                .with_context(|| format!("deleting {}", old.path.display()))?;
            tracing::info!(
                "deleted {} (offsets {}..{next}, all settled)",
                old.path.display(),
                old.base
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 batch of `n` messages from `producer` (-1: not idempotent) at `seq`.
    fn batch(n: i32, producer: i64, seq: i32) -> Vec<u8> {
        let values: Vec<&[u8]> = (0..n).map(|_| &b"0123456789"[..]).collect();
        crate::batch::build(&values, producer, seq)
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dtss-broker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn offsets_reads_and_reopen_after_a_torn_write() {
        let dir = tmp("reopen");
        let mut log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!(log.append(&batch(3, -1, 0)).unwrap(), 0);
        assert_eq!(log.append(&batch(2, -1, 0)).unwrap(), 3);
        assert_eq!((log.start(), log.end()), (0, 5));
        let from4 = log.read(4, 1 << 20, true).unwrap();
        assert_eq!(
            be_i64(&from4, 0),
            3,
            "the batch holding offset 4 starts at 3"
        );
        assert_eq!(
            log.read(5, 1 << 20, true).unwrap().len(),
            0,
            "end of the log"
        );
        assert!(log.read(6, 1 << 20, true).is_none());
        let one = log.read(0, 1, true).unwrap();
        assert_eq!(
            header(&one).unwrap().len,
            one.len(),
            "at least one whole batch"
        );
        drop(log);
        // A crash in the middle of a write leaves half a batch behind.
        let seg = segment_path(&dir, 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&batch(4, -1, 0)[..30]).unwrap();
        drop(f);
        let mut log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!((log.start(), log.end()), (0, 5));
        assert_eq!(log.append(&batch(1, -1, 0)).unwrap(), 5);
        assert_eq!(be_i64(&log.read(5, 1 << 20, true).unwrap(), 0), 5);
        drop(log);
        assert_eq!(PartitionLog::open(&dir, false).unwrap().end(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_retried_batch_gets_its_first_offset_and_is_not_written_twice() {
        let dir = tmp("idem");
        let mut log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!(log.append(&batch(2, 9, 0)).unwrap(), 0);
        assert_eq!(log.append(&batch(3, 9, 2)).unwrap(), 2);
        assert_eq!(log.append(&batch(2, 9, 0)).unwrap(), 0, "retry");
        assert_eq!(log.end(), 5);
        assert_eq!(
            log.append(&batch(1, 9, 9)).unwrap_err(),
            Refused::OutOfOrderSequence
        );
        assert_eq!(log.append(&batch(1, 9, 5)).unwrap(), 5);
        assert_eq!(log.append(&[1, 2, 3]).unwrap_err(), Refused::CorruptMessage);
        // The broker crashes after writing a batch but before its ack: the producer
        // sends it again to the restarted broker.
        drop(log);
        let mut log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!(
            log.append(&batch(1, 9, 5)).unwrap(),
            5,
            "retry after a restart"
        );
        assert_eq!(log.end(), 6);
        assert_eq!(log.append(&batch(2, 9, 6)).unwrap(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_forged_at_a_producers_next_sequence_does_not_swallow_the_real_one() {
        let dir = tmp("hijack");
        let mut log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!(log.append(&batch(1, 9, 0)).unwrap(), 0);
        // Someone else sends a batch with producer 9's id, epoch and next sequence.
        let forged = crate::batch::build(&[b"forged"], 9, 1);
        assert_eq!(log.append(&forged).unwrap(), 1);
        // Producer 9's own batch at that sequence is not taken for a retry of it: refused,
        // so its producer hears of it instead of getting an ack for nothing written.
        let real = crate::batch::build(&[b"real order"], 9, 1);
        assert_eq!(log.append(&real).unwrap_err(), Refused::OutOfOrderSequence);
        assert_eq!(log.end(), 2);
        // A true retry (the same bytes) still gets its first offset.
        assert_eq!(log.append(&forged).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_batches_are_refused_and_nothing_of_them_is_written() {
        let dir = tmp("corrupt");
        let mut log = PartitionLog::open(&dir, false).unwrap();
        let mut bad_crc = batch(2, -1, 0);
        let last = bad_crc.len() - 3;
        bad_crc[last] ^= 0x10;
        assert_eq!(log.append(&bad_crc).unwrap_err(), Refused::CorruptMessage);
        let mut lying = batch(2, -1, 0);
        lying[23..27].copy_from_slice(&999_999i32.to_be_bytes());
        crate::batch::reseal(&mut lying);
        assert_eq!(log.append(&lying).unwrap_err(), Refused::CorruptMessage);
        // A good batch and a bad one in one request: neither is written.
        let mut both = batch(1, -1, 0);
        both.extend_from_slice(&bad_crc);
        assert_eq!(log.append(&both).unwrap_err(), Refused::CorruptMessage);
        assert_eq!(log.end(), 0);
        assert_eq!(log.append(&batch(1, -1, 0)).unwrap(), 0);
        // A segment whose last batch rotted on disk is cut back to the good ones.
        drop(log);
        let seg = segment_path(&dir, 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&bad_crc).unwrap();
        drop(f);
        assert_eq!(PartitionLog::open(&dir, false).unwrap().end(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trim_drops_only_settled_segments() {
        let dir = tmp("trim");
        let mut log = PartitionLog::open(&dir, false).unwrap();
        log.append(&batch(2, -1, 0)).unwrap();
        log.file_len = SEGMENT_BYTES; // force a new segment at offset 2
        log.append(&batch(2, -1, 0)).unwrap();
        log.file_len = SEGMENT_BYTES; // and one at 4
        log.append(&batch(2, -1, 0)).unwrap();
        log.trim(3).unwrap();
        assert_eq!(log.start(), 2, "segment 2..4 holds an unsettled offset");
        log.trim(4).unwrap();
        assert_eq!((log.start(), log.end()), (4, 6));
        log.trim(100).unwrap();
        assert_eq!(log.start(), 4, "the segment being written stays");
        drop(log);
        let log = PartitionLog::open(&dir, false).unwrap();
        assert_eq!((log.start(), log.end()), (4, 6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Run one sync of `log` as the broker does.
    fn sync(log: &mut PartitionLog) {
        if let Some(job) = log.sync_job().unwrap() {
            job.file.sync_data().unwrap();
            log.synced_to(job.upto);
        }
    }

    fn record(dir: &Path) -> Vec<i64> {
        std::fs::read_to_string(dir.join(SYNCED_FILE))
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    }

    #[test]
    fn appends_are_served_and_answered_only_once_synced() {
        let dir = tmp("synced");
        let mut log = PartitionLog::open(&dir, true).unwrap();
        let b = batch(3, -1, 0);
        assert_eq!(log.append(&b).unwrap(), 0);
        assert_eq!((log.end(), log.high_watermark()), (3, 0));
        assert_eq!(log.is_durable(3, 0), None, "waiting for a sync");
        assert_eq!(
            log.read(0, 1 << 20, true).unwrap().len(),
            0,
            "not served yet"
        );
        sync(&mut log);
        assert_eq!(log.high_watermark(), 3);
        assert_eq!(log.is_durable(3, 0), Some(true));
        assert_eq!(log.read(0, 1 << 20, true).unwrap().len(), b.len());
        assert_eq!(
            record(&dir),
            vec![0, b.len() as i64, 3],
            "segment, bytes, end"
        );
        assert!(log.sync_job().unwrap().is_none(), "nothing left to sync");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_sync_cuts_off_what_it_did_not_cover_and_refuses_appends_for_a_moment() {
        let dir = tmp("syncfail");
        let mut log = PartitionLog::open(&dir, true).unwrap();
        log.append(&batch(2, 9, 0)).unwrap();
        sync(&mut log);
        assert_eq!(log.append(&batch(3, 9, 2)).unwrap(), 2);
        let cuts = log.cuts();
        log.sync_failed(&std::io::Error::other("EIO")).unwrap();
        assert_eq!(
            (log.end(), log.high_watermark()),
            (2, 2),
            "the unsynced batch is gone"
        );
        assert_eq!(
            log.is_durable(5, cuts),
            Some(false),
            "its producer hears so"
        );
        assert_eq!(log.is_durable(2, 0), Some(true), "the synced one stays");
        assert!(log.refusing().unwrap().contains("EIO"));
        assert_eq!(
            log.append(&batch(3, 9, 2)).unwrap_err(),
            Refused::StorageError
        );
        log.refusing = None; // the moment passed
                             // The producer's retry of the cut batch is its next batch again, not a duplicate.
        assert_eq!(log.append(&batch(3, 9, 2)).unwrap(), 2);
        assert_eq!(
            log.is_durable(5, cuts),
            Some(false),
            "a later append at the same offsets is not the cut one"
        );
        assert_eq!(log.is_durable(5, log.cuts()), None);
        sync(&mut log);
        drop(log);
        assert_eq!(PartitionLog::open(&dir, true).unwrap().end(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A size-limited tmpfs at a fresh folder (needs root, as the suite runs).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(name: &str, size: &str) -> SmallDisk {
            let dir = tmp(name);
            std::fs::create_dir_all(&dir).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "mounting a tmpfs at {} (the tests run as root)",
                dir.display()
            );
            SmallDisk(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_full_disk_leaves_no_torn_bytes_behind_an_ack_and_appends_resume_once_space_is_back() {
        let disk = SmallDisk::mount("full", "256k");
        let filler = disk.0.join("filler");
        std::fs::write(&filler, vec![0u8; 64 << 10]).unwrap();
        let dir = disk.0.join("orders-0");
        let mut log = PartitionLog::open(&dir, true).unwrap();
        let big = |seq| {
            let value = vec![b'x'; 3000];
            crate::batch::build(&[&value[..]], 9, seq)
        };
        let mut acked = 0;
        let mut refused = 0;
        for seq in 0..200 {
            match log.append(&big(acked)) {
                Ok(_) => {
                    sync(&mut log);
                    acked += 1;
                }
                Err(e) => {
                    assert_eq!(e, Refused::StorageError, "batch {seq}");
                    refused += 1;
                    // On disk: exactly the acked batches, nothing torn after them.
                    let seg = std::fs::metadata(segment_path(&dir, 0)).unwrap().len();
                    assert_eq!(seg, log.file_len, "no torn bytes after a failed write");
                }
            }
        }
        assert!(
            acked > 10 && refused > 0,
            "{acked} acked, {refused} refused"
        );
        assert!(
            log.refusing().unwrap().contains("No space"),
            "{:?}",
            log.refusing()
        );
        // Space comes back and the moment passes: appends go on after the last acked batch.
        std::fs::remove_file(&filler).unwrap();
        log.refusing = None;
        assert_eq!(log.append(&big(acked)).unwrap(), acked as i64);
        sync(&mut log);
        drop(log);
        let log = PartitionLog::open(&dir, true).unwrap();
        assert_eq!(
            log.end(),
            acked as i64 + 1,
            "every acked batch read back, in order"
        );
    }
}

//! TensorBoard event files: the metrics of `metrics.jsonl` as scalars that `tensorboard
//! --logdir runs/` shows beside PyTorch runs, with no TensorFlow or protobuf dependency.
//!
//! An event file is a sequence of TFRecords (`u64` length, masked CRC-32C of the length, the
//! bytes, masked CRC-32C of the bytes), each holding one serialized `tensorflow.Event`:
//! <https://github.com/tensorflow/tensorflow/blob/master/tensorflow/core/util/event.proto> and
//! `summary.proto`. Only the fields a scalar needs are written: `Event.wall_time` (1, double),
//! `Event.step` (2, int64), `Event.file_version` (3, string, the first record),
//! `Event.summary` (5) holding `Summary.value` (1) entries of `tag` (1, string) and
//! `simple_value` (2, float).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: event files are small.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant, so a CRC stored inside
/// CRC-checked data does not weaken the check.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The header of a serialized `Event`: wall time and step.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut out = vec![1 << 3 | 1];
    out.extend_from_slice(&wall_time.to_le_bytes());
    varint(u64::from(2u32 << 3), &mut out);
    varint(step as u64, &mut out);
    out
}

/// A serialized `Event` holding one `Summary` of scalars.
pub fn scalar_event<T: AsRef<str>>(wall_time: f64, step: i64, scalars: &[(T, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut entry = Vec::new();
        bytes_field(1, tag.as_ref().as_bytes(), &mut entry);
        entry.push(2 << 3 | 5);
        entry.extend_from_slice(&value.to_le_bytes());
        bytes_field(1, &entry, &mut summary);
    }
    let mut event = event_header(wall_time, step);
    bytes_field(5, &summary, &mut event);
    event
}

/// A serialized `Event` naming the file format, the first record of every event file.
pub fn version_event(wall_time: f64) -> Vec<u8> {
    let mut event = event_header(wall_time, 0);
    bytes_field(3, b"brain.Event:2", &mut event);
    event
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An event file in a run's `tensorboard/` directory. Each process that trains the run (a
/// resumed run too) starts a file of its own, as TensorBoard's writers do; TensorBoard reads them
/// all, ordered by step.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let wall = now();
        // Seconds, then process and a per-process count, as TensorBoard's own writers name
        // files: two writers never share a name.
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "events.out.tfevents.{}.wick.{}.{}",
            wall as u64,
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let mut writer = Self { file, path };
        writer.write_event(&version_event(wall))?;
        Ok(writer)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &[u8]) -> io::Result<()> {
        // One write per record, flushed, so TensorBoard can read the file while training runs.
        self.file.write_all(&record(event))?;
        self.file.flush()
    }

    /// Writes `scalars` at `step`; non-finite values are left out (TensorBoard would draw them
    /// as gaps or break its axis).
    pub fn scalars<T: AsRef<str>>(&mut self, step: i64, scalars: &[(T, f64)]) -> io::Result<()> {
        let finite: Vec<(&str, f32)> = scalars
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| (tag.as_ref(), *v as f32))
            .collect();
        if finite.is_empty() {
            return Ok(());
        }
        self.write_event(&scalar_event(now(), step, &finite))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 (iSCSI) B.4 and the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn varints_and_records_frame_as_protobuf_and_tfrecord_do() {
        let mut out = Vec::new();
        varint(300, &mut out);
        assert_eq!(out, [0xAC, 0x02]);
        let framed = record(b"abc");
        assert_eq!(&framed[..8], &3u64.to_le_bytes());
        assert_eq!(&framed[12..15], b"abc");
        assert_eq!(framed.len(), 3 + 16);
        let stored = u32::from_le_bytes(framed[15..19].try_into().unwrap());
        assert_eq!(
            stored,
            crc32c(b"abc").rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn a_scalar_event_has_the_expected_bytes() {
        let event = scalar_event(1.5, 7, &[("loss", 0.25)]);
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 7]);
        // summary (5): value (1): tag (1) "loss", simple_value (2, fixed32) 0.25
        let mut value = vec![0x0a, 4];
        value.extend_from_slice(b"loss");
        value.push(0x15);
        value.extend_from_slice(&0.25f32.to_le_bytes());
        let mut summary = vec![0x0a, value.len() as u8];
        summary.extend_from_slice(&value);
        expected.extend_from_slice(&[0x2a, summary.len() as u8]);
        expected.extend_from_slice(&summary);
        assert_eq!(event, expected);
    }
}

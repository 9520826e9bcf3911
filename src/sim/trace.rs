//! [`Trace`]: what a run did, line by line, folded into a digest that two runs
//! of one seed must share.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

/// Lines kept for a failure's report.
const TAIL: usize = 64;

#[derive(Default)]
struct Lines {
    /// FNV-1a over every line: fixed by definition, so a digest printed
    /// today compares with one printed by another build.
    digest: u64,
    count: u64,
    tail: VecDeque<String>,
    all: Option<Vec<String>>,
}

/// The record of one run: every event committed (time, tenant, topic,
/// payload), every fault struck, every restart and what the scenario notes.
/// Cheap to clone; clones write to the same record.
#[derive(Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Lines>>,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lock();
        f.debug_struct("Trace")
            .field("lines", &lines.count)
            .field("digest", &format_args!("{:016x}", lines.digest))
            .finish()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    /// A trace that keeps its last lines only.
    pub fn new() -> Self {
        let trace = Trace::default();
        trace.lock().digest = FNV_OFFSET;
        trace
    }

    /// A trace that keeps every line (to compare two runs line by line).
    pub fn keeping_all() -> Self {
        let trace = Trace::new();
        trace.lock().all = Some(Vec::new());
        trace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a line.
    pub fn note(&self, line: fmt::Arguments<'_>) {
        let mut text = String::new();
        let _ = text.write_fmt(line);
        let mut lines = self.lock();
        let mut digest = lines.digest;
        for byte in text.bytes().chain([b'\n']) {
            digest ^= u64::from(byte);
            digest = digest.wrapping_mul(FNV_PRIME);
        }
        lines.digest = digest;
        lines.count += 1;
        if let Some(all) = &mut lines.all {
            all.push(text.clone());
        }
        if lines.tail.len() == TAIL {
            lines.tail.pop_front();
        }
        lines.tail.push_back(text);
    }

    /// The digest of every line so far.
    pub fn digest(&self) -> u64 {
        self.lock().digest
    }

    /// How many lines were noted.
    pub fn len(&self) -> u64 {
        self.lock().count
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last lines noted (up to 64).
    pub fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    /// Every line, for a trace made [`keeping_all`](Self::keeping_all).
    pub fn lines(&self) -> Option<Vec<String>> {
        self.lock().all.clone()
    }
}

/// A short, stable fingerprint of some bytes (FNV-1a).
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |digest, byte| {
        (digest ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lines_give_equal_digests_and_any_change_another() {
        let a = Trace::new();
        let b = Trace::keeping_all();
        for trace in [&a, &b] {
            trace.note(format_args!("emit {}", 1));
            trace.note(format_args!("fault #3 Claim error"));
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(b.lines().unwrap().len(), 2);
        b.note(format_args!("restart"));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.tail(), vec!["emit 1", "fault #3 Claim error"]);
        assert_eq!(fingerprint(b""), FNV_OFFSET);
    }
}

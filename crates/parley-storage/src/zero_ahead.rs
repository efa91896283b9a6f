//! [`ZeroAheadFile`]: redb's file backend, with the space redb grows into written with zeros
//! before redb's pages land there.
//!
//! redb grows its file with `set_len`, which leaves a hole, and copy-on-write puts each commit's
//! new pages at the growing end. On ext4 the first write into a hole allocates blocks, so the
//! commit's `fdatasync` must also commit the filesystem journal: about twice the time of an
//! `fdatasync` over blocks already written (measured on the benchmark VM: p50 0.47 against 0.25
//! ms for 20 scattered 4 KiB pages). Every message waits for one or two of those, so that time
//! is most of a message's latency at moderate load. Preallocating with `fallocate` does not help
//! (its unwritten extents are converted, which is a journal commit too); writing zeros does.
//!
//! So a write that lands at or just past the furthest point written so far (the frontier) first
//! fills the file with zeros from the frontier to [`ZERO_AHEAD`] past the write. The zeros reach
//! the disk with that commit's `fdatasync`, so one commit in every [`ZERO_AHEAD`] or so of growth
//! carries them. A write far beyond the frontier (redb sometimes puts a page at the far end of a
//! region it just grew into) is not filled up to, which would make one commit carry megabytes of
//! zeros; it is remembered instead, and later fills step over it. Nothing else above the
//! frontier has been written since the file was opened, so the zeros never cover data.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// How far past the furthest write the file is filled with zeros, and the unit it grows by.
pub const ZERO_AHEAD: u64 = 1024 * 1024;

/// A [`FileBackend`] that writes zeros ahead of redb's writes (see the module docs).
#[derive(Debug)]
pub struct ZeroAheadFile {
    inner: FileBackend,
    /// A second handle on the same file, for the zeros (`FileBackend` does not lend its own).
    file: File,
    /// How far past a write near the frontier the zeros go.
    ahead: u64,
    written: Mutex<Written>,
}

/// What of the file is known to be written since it was opened.
#[derive(Debug)]
struct Written {
    /// Every byte below this is written (zeros or data), or was in the file when it was opened.
    frontier: u64,
    /// Ranges written far beyond the frontier (start to end), which fills step over.
    beyond: BTreeMap<u64, u64>,
}

impl ZeroAheadFile {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with_ahead(path, ZERO_AHEAD)
    }

    fn open_with_ahead(path: &Path, ahead: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let zeros = file.try_clone()?;
        let frontier = file.metadata()?.len();
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self {
            inner,
            file: zeros,
            ahead,
            written: Mutex::new(Written {
                frontier,
                beyond: BTreeMap::new(),
            }),
        })
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        // Plain bookkeeping, valid whatever panicked while it was held.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes zeros from the frontier up to `target` (further if a remembered range reaches past
    /// it), stepping over the ranges written beyond the frontier, and moves the frontier there.
    fn fill(&self, written: &mut Written, mut target: u64) -> io::Result<()> {
        let mut at = written.frontier;
        while at < target {
            let next = written
                .beyond
                .range(..target)
                .next()
                .map(|(start, end)| (*start, *end));
            match next {
                Some((start, end)) => {
                    if start > at {
                        write_zeros(&self.file, at, start)?;
                    }
                    at = at.max(end);
                    target = target.max(end);
                    written.beyond.remove(&start);
                }
                None => {
                    write_zeros(&self.file, at, target)?;
                    at = target;
                }
            }
        }
        written.frontier = at;
        Ok(())
    }
}

/// Writes zeros over `[from, to)`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let len = (to - at).min(CHUNK.len() as u64) as usize;
        file.write_all_at(&CHUNK[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

impl StorageBackend for ZeroAheadFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut written = self.written();
        self.inner.set_len(len)?;
        written.frontier = written.frontier.min(len);
        written.beyond.retain(|start, _| *start < len);
        for end in written.beyond.values_mut() {
            *end = (*end).min(len);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut written = self.written();
        let end = offset.saturating_add(data.len() as u64);
        if end > written.frontier {
            if offset > written.frontier.saturating_add(self.ahead) {
                let known = written.beyond.entry(offset).or_insert(end);
                *known = (*known).max(end);
            } else {
                let file_len = self.inner.len()?;
                let ahead = end
                    .div_ceil(self.ahead)
                    .saturating_add(1)
                    .saturating_mul(self.ahead);
                self.fill(&mut written, ahead.min(file_len).max(end))?;
            }
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const PAGE: u64 = 4096;

    /// A small deterministic generator, so a failure replays.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    fn contents(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn writes_near_the_frontier_fill_the_hole_before_them_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = ZeroAheadFile::open_with_ahead(&path, 16 * PAGE).unwrap();
        file.set_len(256 * PAGE).unwrap();
        file.write(3 * PAGE, &[7; PAGE as usize]).unwrap();
        // Up to 16 pages past the write, rounded to 16-page units, is written now: no hole left
        // where the next pages of a growing file go.
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated >= 32 * PAGE, "{allocated} bytes allocated");
        let bytes = contents(&path);
        assert!(bytes[..3 * PAGE as usize].iter().all(|byte| *byte == 0));
        assert!(
            bytes[3 * PAGE as usize..4 * PAGE as usize]
                .iter()
                .all(|byte| *byte == 7)
        );
    }

    #[test]
    fn no_write_is_ever_covered_by_zeros() {
        // Random writes near and far from the frontier, growth and shrinking, checked against a
        // model of what the file must hold after every step.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = ZeroAheadFile::open_with_ahead(&path, 4 * PAGE).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut random = Lcg(42);
        for step in 0..400u64 {
            match random.below(10) {
                0 => {
                    let len = random.below(96) * PAGE;
                    file.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                _ if model.is_empty() => {
                    file.set_len(32 * PAGE).unwrap();
                    model.resize(32 * PAGE as usize, 0);
                }
                choice => {
                    let pages = model.len() as u64 / PAGE;
                    // Mostly just past the end of the pages written so far, sometimes anywhere.
                    let last_data = model.iter().rposition(|byte| *byte != 0).unwrap_or(0) as u64 / PAGE;
                    let page = if choice < 7 {
                        (last_data + random.below(3)).min(pages - 1)
                    } else {
                        random.below(pages)
                    };
                    let len = (random.below(2) + 1).min(pages - page) * PAGE;
                    let fill = (step % 250 + 1) as u8;
                    let data = vec![fill; len as usize];
                    file.write(page * PAGE, &data).unwrap();
                    model[(page * PAGE) as usize..(page * PAGE + len) as usize].copy_from_slice(&data);
                }
            }
            assert_eq!(file.len().unwrap(), model.len() as u64, "step {step}");
            assert!(
                contents(&path) == model,
                "step {step}: the file differs from what was written"
            );
        }
    }

    #[test]
    fn a_redb_database_on_it_reopens_with_its_data() {
        use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
        const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = redb::Builder::new()
                .create_with_backend(ZeroAheadFile::open(&path).unwrap())
                .unwrap();
            for batch in 0..20u64 {
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    for n in 0..500u64 {
                        table
                            .insert(batch * 500 + n, [batch as u8; 600].as_slice())
                            .unwrap();
                    }
                }
                txn.commit().unwrap();
            }
        }
        let db = redb::Builder::new()
            .create_with_backend(ZeroAheadFile::open(&path).unwrap())
            .unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 10_000);
        assert_eq!(table.get(9_999).unwrap().unwrap().value(), [19u8; 600].as_slice());
    }
}

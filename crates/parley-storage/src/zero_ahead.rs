//! [`ZeroAheadFile`]: redb's file backend, with the space redb grows into written with zeros
//! before redb's pages land there.
//!
//! redb grows its file with `set_len`, which leaves a hole, and copy-on-write puts each commit's
//! new pages at the growing end. On ext4 the first write into a hole allocates blocks, so the
//! commit's `fdatasync` must also write the allocation's metadata (the inode's extents and the
//! bitmaps; the benchmark VM's ext4 has no journal, a journaled one commits its journal
//! instead): about twice the time of an
//! `fdatasync` over blocks already written (measured on the benchmark VM: p50 0.47 against 0.25
//! ms for 20 scattered 4 KiB pages). Every message waits for one or two of those, so that time
//! is most of a message's latency at moderate load. Preallocating with `fallocate` does not help
//! (its unwritten extents are converted, which is a metadata write too); writing zeros does.
//!
//! So before a write lands where nothing has been written since the file was opened, the file
//! around it, from the [`ZERO_AHEAD`] boundary below it to one [`ZERO_AHEAD`] past the boundary
//! above it, is written with zeros wherever nothing has been written yet. redb's next pages then
//! land on written blocks, whether they go at the growing end of the file or at the far end of a
//! region it just grew into, and no commit carries more than about three [`ZERO_AHEAD`] of zeros
//! (they reach the disk with that commit's `fdatasync`). The ranges written since the file was
//! opened (and what it held then) are kept, and zeros only ever go outside them, so they never
//! cover data.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The unit of the zeros written around a write into unwritten space.
pub const ZERO_AHEAD: u64 = 1024 * 1024;

/// A [`FileBackend`] that writes zeros ahead of redb's writes (see the module docs).
#[derive(Debug)]
pub struct ZeroAheadFile {
    inner: FileBackend,
    /// A second handle on the same file, for the zeros (`FileBackend` does not lend its own).
    file: File,
    /// The unit of the zeros around a write.
    ahead: u64,
    written: Mutex<Written>,
}

/// The ranges of the file known to be written (zeros or data) since it was opened, or held by it
/// then: disjoint and not touching, start to end.
#[derive(Debug, Default)]
struct Written(BTreeMap<u64, u64>);

impl Written {
    /// Whether all of `[start, end)` is written.
    fn covers(&self, start: u64, end: u64) -> bool {
        self.0
            .range(..=start)
            .next_back()
            .is_some_and(|(_, written_end)| *written_end >= end)
    }

    /// The parts of `[start, end)` not written, in order.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = start;
        let before = self.0.range(..start).next_back();
        for (range_start, range_end) in before.into_iter().chain(self.0.range(start..end)) {
            if *range_start > at {
                gaps.push((at, (*range_start).min(end)));
            }
            at = at.max(*range_end);
        }
        if at < end {
            gaps.push((at, end));
        }
        gaps
    }

    /// Marks `[start, end)` written, merging it with the ranges it overlaps or touches.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((before_start, before_end)) = self.0.range(..=start).next_back()
            && *before_end >= start
        {
            start = *before_start;
            end = end.max(*before_end);
        }
        let merged: Vec<u64> = self
            .0
            .range(start..=end)
            .map(|(range_start, _)| *range_start)
            .collect();
        for range_start in merged {
            if let Some(range_end) = self.0.remove(&range_start) {
                end = end.max(range_end);
            }
        }
        self.0.insert(start, end);
    }

    /// Forgets everything at or past `len` (the file was cut there).
    fn truncate(&mut self, len: u64) {
        self.0.retain(|start, _| *start < len);
        for end in self.0.values_mut() {
            *end = (*end).min(len);
        }
    }
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
        let len = file.metadata()?.len();
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self {
            inner,
            file: zeros,
            ahead,
            written: Mutex::new({
                let mut written = Written::default();
                written.insert(0, len);
                written
            }),
        })
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        // Plain bookkeeping, valid whatever panicked while it was held.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
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
        written.truncate(len);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut written = self.written();
        let end = offset.saturating_add(data.len() as u64);
        if !written.covers(offset, end) {
            let file_len = self.inner.len()?;
            let from = offset / self.ahead * self.ahead;
            let to = end
                .div_ceil(self.ahead)
                .saturating_add(1)
                .saturating_mul(self.ahead);
            let to = to.min(file_len).max(end);
            for (gap_start, gap_end) in written.gaps(from, to) {
                write_zeros(&self.file, gap_start, gap_end)?;
            }
            written.insert(from, to);
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

    /// A new file of `pages` pages (a hole), in a temp dir that lives as long as the result.
    fn new_file(ahead: u64, pages: u64) -> (tempfile::TempDir, std::path::PathBuf, ZeroAheadFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = ZeroAheadFile::open_with_ahead(&path, ahead).unwrap();
        file.set_len(pages * PAGE).unwrap();
        (dir, path, file)
    }

    /// Bytes of disk the file occupies.
    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// Whether page `page` of `bytes` holds `value` throughout.
    fn page_holds(bytes: &[u8], page: u64, value: u8) -> bool {
        bytes[(page * PAGE) as usize..((page + 1) * PAGE) as usize]
            .iter()
            .all(|byte| *byte == value)
    }

    #[test]
    fn writes_near_the_frontier_fill_the_hole_before_them_with_zeros() {
        let (_dir, path, file) = new_file(16 * PAGE, 256);
        file.write(3 * PAGE, &[7; PAGE as usize]).unwrap();
        // Up to 16 pages past the write, rounded to 16-page units, is written now: no hole left
        // where the next pages of a growing file go.
        assert!(
            allocated(&path) >= 32 * PAGE,
            "{} bytes allocated",
            allocated(&path)
        );
        let bytes = contents(&path);
        assert!((0..3).all(|page| page_holds(&bytes, page, 0)));
        assert!(page_holds(&bytes, 3, 7));
    }

    #[test]
    fn a_write_far_ahead_gets_zeros_around_it_not_up_to_it() {
        let (_dir, path, file) = new_file(16 * PAGE, 1024);
        file.write(1000 * PAGE, &[9; PAGE as usize]).unwrap();
        // Pages 992..1024 (the file ends there), not the 992 pages below them.
        let allocated = allocated(&path);
        assert!(
            (32 * PAGE..=64 * PAGE).contains(&allocated),
            "{allocated} bytes allocated"
        );
        file.write(998 * PAGE, &[8; PAGE as usize]).unwrap();
        let bytes = contents(&path);
        assert!(page_holds(&bytes, 998, 8));
        assert!(page_holds(&bytes, 1000, 9));
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

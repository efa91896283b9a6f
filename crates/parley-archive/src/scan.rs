//! Reading the chain in sequence order, one block of [`BLOCK_SIZE`] sequence numbers at a time,
//! so verification, search, export and purge run in constant memory on any archive size.

use parley_storage::{KeyValue, Space};

use crate::ArchiveError;
use crate::entry::{BLOCK_SIZE, CHAIN_OWNER, block_prefix};

/// Keys read per block: a block holds at most `BLOCK_SIZE` well-formed keys; the slack lets
/// verification also see a few malformed (inserted) ones.
const BLOCK_READ_LIMIT: usize = BLOCK_SIZE as usize + 1024;

/// The blocks covering sequence numbers `1..=last_seq`, read in order.
pub(crate) struct BlockScan<'a> {
    kv: &'a dyn KeyValue,
    space: Space,
    owner: &'a str,
    next_block: u64,
    last_block: u64,
}

impl<'a> BlockScan<'a> {
    pub(crate) fn chain(kv: &'a dyn KeyValue, first_seq: u64, last_seq: u64) -> Self {
        Self::of(kv, Space::Compliance, CHAIN_OWNER, first_seq, last_seq)
    }

    pub(crate) fn of(
        kv: &'a dyn KeyValue,
        space: Space,
        owner: &'a str,
        first_seq: u64,
        last_seq: u64,
    ) -> Self {
        Self {
            kv,
            space,
            owner,
            next_block: first_seq / BLOCK_SIZE,
            last_block: last_seq / BLOCK_SIZE,
        }
    }

    /// The next block's (key, value) pairs in key order; None after the last block.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<(String, Vec<u8>)>>, ArchiveError> {
        if self.next_block > self.last_block {
            return Ok(None);
        }
        let block = self.next_block;
        self.next_block += 1;
        let entries = self
            .kv
            .scan_prefix(self.space, self.owner, &block_prefix(block), BLOCK_READ_LIMIT)
            .await?;
        Ok(Some(entries))
    }

    /// Reads the same block range from another owner (tombstones, checkpoints), for merging.
    pub(crate) async fn block_of(
        kv: &dyn KeyValue,
        space: Space,
        owner: &str,
        block: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
        Ok(kv
            .scan_prefix(space, owner, &block_prefix(block), BLOCK_READ_LIMIT)
            .await?)
    }

    /// The block number the last `next` returned.
    pub(crate) fn current_block(&self) -> u64 {
        self.next_block.saturating_sub(1)
    }
}

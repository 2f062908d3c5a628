//! The worker's prefix cache: an LRU of block hashes, counted the way vLLM counts it.
//!
//! vLLM (automatic prefix caching) identifies each full block of 16 prompt tokens by a hash
//! chained over all previous blocks; a new request reuses the longest run of leading blocks
//! already in the cache. `vllm:prefix_cache_queries` counts prompt tokens looked up and
//! `vllm:prefix_cache_hits` the tokens found (../shared/reference/vllm.md §8).

use std::collections::{BTreeMap, HashMap};

use super::tokenizer::BLOCK_TOKENS;

/// Least-recently-used set of block hashes with a fixed capacity in blocks.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    capacity: usize,
    /// hash -> last-use stamp
    stamps: HashMap<u64, u64>,
    /// last-use stamp -> hash (oldest first)
    by_age: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            stamps: HashMap::with_capacity(capacity.min(1 << 16)),
            by_age: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Looks up a prompt's blocks, then inserts (or refreshes) all of them.
    /// Returns the number of prompt tokens served from the cache.
    ///
    /// As in vLLM, at least one prompt token is always computed: when every block of a
    /// block-aligned prompt is cached, the last block does not count as a hit.
    pub(crate) fn lookup_and_insert(&mut self, blocks: &[u64], prompt_tokens: u32) -> u32 {
        if self.capacity == 0 {
            return 0;
        }
        let leading = blocks
            .iter()
            .take_while(|h| self.stamps.contains_key(h))
            .count();
        let max_blocks = (prompt_tokens.saturating_sub(1) as usize) / BLOCK_TOKENS;
        let hit_blocks = leading.min(max_blocks);
        // Touch from the last block to the first so the first block is the most recent: vLLM
        // evicts a prompt's tail blocks before its head, which keeps shared prefixes alive.
        for &h in blocks.iter().rev() {
            self.touch(h);
        }
        u32::try_from(hit_blocks * BLOCK_TOKENS).unwrap_or(u32::MAX)
    }

    fn touch(&mut self, h: u64) {
        self.clock += 1;
        if let Some(old) = self.stamps.insert(h, self.clock) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.clock, h);
        while self.stamps.len() > self.capacity {
            match self.by_age.pop_first() {
                Some((_, victim)) => {
                    self.stamps.remove(&victim);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stamps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_leading_blocks_only() {
        let mut c = PrefixCache::new(100);
        assert_eq!(c.lookup_and_insert(&[1, 2, 3], 50), 0);
        assert_eq!(c.lookup_and_insert(&[1, 2, 3], 50), 48);
        assert_eq!(c.lookup_and_insert(&[1, 2, 9], 50), 32);
        assert_eq!(c.lookup_and_insert(&[7, 2, 3], 50), 0);
    }

    #[test]
    fn fully_cached_aligned_prompt_recomputes_last_block() {
        let mut c = PrefixCache::new(100);
        c.lookup_and_insert(&[1, 2], 32);
        assert_eq!(c.lookup_and_insert(&[1, 2], 32), 16);
        assert_eq!(c.lookup_and_insert(&[1, 2], 33), 32);
    }

    #[test]
    fn lru_evicts_oldest_and_tail_first() {
        let mut c = PrefixCache::new(3);
        c.lookup_and_insert(&[1, 2, 3], 100);
        c.lookup_and_insert(&[4], 100); // evicts 3 (tail of the older prompt)
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup_and_insert(&[1, 2, 3], 100), 32);
    }

    #[test]
    fn zero_capacity_disables() {
        let mut c = PrefixCache::new(0);
        c.lookup_and_insert(&[1], 100);
        assert_eq!(c.lookup_and_insert(&[1], 100), 0);
    }
}

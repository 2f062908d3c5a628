//! Where prefixes that spilled went, so that they stay there.
//!
//! Bounded-load consistent hashing spills single requests: when a prefix's
//! worker on the ring is over the load bound, that one request goes to the
//! next worker, the following one may go home again. With many light
//! prefixes that is harmless. With a few heavy ones (tenants with long system
//! prompts) the ring routinely gives one worker more of them than its cache
//! holds (8 prefixes hash 2/2/2/2 onto 4 workers only 4% of the time), and
//! request-level spills then smear every prefix of the overloaded worker
//! over two caches: the overloaded cache still sees them all and thrashes,
//! and the spill targets' caches take in visitors as well
//! (`benches/affinity.rs`: 74–85% hit rate with caches of 2.5 tenants).
//!
//! So a spill moves the prefix: while its home stays busy, the prefix's
//! requests follow it to the worker it spilled to (still under the load
//! bound). An overloaded worker thus sheds whole prefixes until it is within
//! the bound, which is the balanced placement the ring could not find by
//! hashing alone. Once the home is idle the prefix goes home again, so at
//! rest every replica routes by the ring alone, and a pool rebuilt after a
//! membership change starts from the ring too.
//!
//! The memory is a direct-mapped table of atomics (no lock on the request
//! path): a collision only forgets a spill, it never misroutes, because each
//! entry carries a fingerprint of its key.

use std::sync::atomic::{AtomicU64, Ordering};

/// Entries in the table (a power of two): room for this many spilled
/// prefixes at once before collisions start to forget some.
const SLOTS: usize = 4096;

pub(super) struct SpillMemory {
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for SpillMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillMemory")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl SpillMemory {
    pub(super) fn new() -> SpillMemory {
        SpillMemory {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The member index `key` spilled to, if remembered.
    pub(super) fn get(&self, key: u64) -> Option<usize> {
        let v = self.slot(key).load(Ordering::Relaxed);
        (v != 0 && v >> 16 == fingerprint(key)).then(|| (v & 0xffff) as usize - 1)
    }

    /// Remember that `key` spilled to member `index`.
    pub(super) fn set(&self, key: u64, index: usize) {
        // Indexes beyond the field are not remembered (pools are far smaller).
        if let Some(i) = u64::try_from(index + 1).ok().filter(|i| *i <= 0xffff) {
            self.slot(key)
                .store(fingerprint(key) << 16 | i, Ordering::Relaxed);
        }
    }

    /// Forget `key`'s spill (it went home).
    pub(super) fn clear(&self, key: u64) {
        let slot = self.slot(key);
        let v = slot.load(Ordering::Relaxed);
        if v != 0 && v >> 16 == fingerprint(key) {
            // Only our own entry: another key may have taken the slot since.
            let _ = slot.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn slot(&self, key: u64) -> &AtomicU64 {
        &self.slots[(key as usize) & (SLOTS - 1)]
    }
}

/// The key's bits above the slot index, 48 of them.
fn fingerprint(key: u64) -> u64 {
    (key >> 12) & 0xffff_ffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_forgets_and_tells_keys_apart() {
        let m = SpillMemory::new();
        assert_eq!(m.get(42), None);
        m.set(42, 0);
        assert_eq!(m.get(42), Some(0));
        m.set(42, 3);
        assert_eq!(m.get(42), Some(3));
        // Same slot, another key: no false memory, and it replaces the entry.
        let other = 42 + SLOTS as u64;
        assert_eq!(m.get(other), None);
        m.clear(other);
        assert_eq!(m.get(42), Some(3), "clearing another key leaves ours");
        m.set(other, 1);
        assert_eq!(m.get(42), None);
        assert_eq!(m.get(other), Some(1));
        m.clear(other);
        assert_eq!(m.get(other), None);
        m.set(7, 70_000);
        assert_eq!(m.get(7), None, "out of range is not remembered");
    }
}

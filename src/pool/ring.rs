//! A consistent-hash ring over a pool's workers, for prefix affinity.
//!
//! Each worker owns many points on the ring, placed by hashing its URL, so a
//! worker's place does not depend on which other workers exist: adding or
//! removing one moves only the prefixes that land on its points.

/// Points per worker: enough that shares even out (each worker's share of
/// the ring within a few percent of 1/n for small pools).
const POINTS_PER_WORKER: usize = 160;

#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, member index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut points = Vec::new();
        for (index, url) in urls.into_iter().enumerate() {
            for replica in 0..POINTS_PER_WORKER {
                points.push((point(url, replica), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Member indexes in ring order starting at `key`'s position, each once.
    pub fn walk(&self, key: u64, members: usize) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        let mut seen = vec![false; members];
        (0..n).filter_map(move |k| {
            let (_, index) = self.points[(start + k) % n];
            if index < seen.len() && !seen[index] {
                seen[index] = true;
                Some(index)
            } else {
                None
            }
        })
    }
}

fn point(url: &str, replica: usize) -> u64 {
    // A specified hash (xxh3), not std's unspecified one: every gateway
    // replica, whatever its build, places the points identically, so all of
    // them send a prefix to the same worker.
    xxhash_rust::xxh3::xxh3_64_with_seed(url.as_bytes(), replica as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8000")).collect()
    }

    fn owner(ring: &Ring, key: u64, n: usize) -> usize {
        ring.walk(key, n).next().unwrap()
    }

    #[test]
    fn walk_visits_every_member_once() {
        let u = urls(5);
        let ring = Ring::new(u.iter().map(String::as_str));
        let mut order: Vec<usize> = ring.walk(12345, 5).collect();
        order.sort_unstable();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn shares_are_even() {
        let u = urls(4);
        let ring = Ring::new(u.iter().map(String::as_str));
        let mut counts = [0usize; 4];
        for k in 0..40_000u64 {
            counts[owner(&ring, k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 4)] += 1;
        }
        for c in counts {
            assert!((8_000..12_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn adding_a_worker_moves_only_its_share() {
        let four = urls(4);
        let five = urls(5);
        let a = Ring::new(four.iter().map(String::as_str));
        let b = Ring::new(five.iter().map(String::as_str));
        let mut moved = 0;
        let total = 20_000u64;
        for k in 0..total {
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let before = owner(&a, key, 4);
            let after = owner(&b, key, 5);
            if before != after {
                // Anything that moved, moved to the new worker.
                assert_eq!(after, 4);
                moved += 1;
            }
        }
        let share = moved as f64 / total as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
    }
}

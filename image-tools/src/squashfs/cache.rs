//! A bounded, sharded CLOCK cache of decompressed blocks.
//!
//! Callers look up, and on a miss read and decompress with no lock held, then
//! insert; two threads missing the same block both do the work, which is
//! cheaper than making readers wait behind one another's disk reads.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

pub(crate) struct Cache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    hasher: RandomState,
    shard_budget: usize,
}

struct Shard<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in CLOCK order (swap_remove reorders a little; CLOCK stays approximate).
    ring: Vec<K>,
    hand: usize,
    bytes: usize,
}

struct Slot<V> {
    value: Arc<V>,
    weight: usize,
    referenced: bool,
}

impl<K: Hash + Eq + Copy, V> Cache<K, V> {
    /// A cache holding about `budget` bytes in all (weights are given on insert).
    pub(crate) fn new(budget: usize) -> Self {
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        ring: Vec::new(),
                        hand: 0,
                        bytes: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            shard_budget: budget / SHARDS,
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding the lock cannot leave a shard inconsistent in a
        // way that matters for a cache, so poisoning is ignored.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut shard = self.shard(key);
        let slot = shard.map.get_mut(key)?;
        slot.referenced = true;
        Some(Arc::clone(&slot.value))
    }

    /// Inserts and returns the cached value (the earlier one if another thread won the race).
    pub(crate) fn insert(&self, key: K, value: V, weight: usize) -> Arc<V> {
        let value = Arc::new(value);
        if weight > self.shard_budget {
            return value;
        }
        let mut shard = self.shard(&key);
        if let Some(slot) = shard.map.get_mut(&key) {
            slot.referenced = true;
            return Arc::clone(&slot.value);
        }
        shard.evict_for(weight, self.shard_budget);
        shard.ring.push(key);
        shard.bytes += weight;
        shard.map.insert(
            key,
            Slot {
                value: Arc::clone(&value),
                weight,
                referenced: false,
            },
        );
        value
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes)
            .sum()
    }
}

impl<K: Hash + Eq + Copy, V> Shard<K, V> {
    fn evict_for(&mut self, weight: usize, budget: usize) {
        // Each slot is passed at most twice (once to clear its bit, once to
        // evict), so this terminates.
        while self.bytes + weight > budget && !self.ring.is_empty() {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let key = self.ring[self.hand];
            let Some(slot) = self.map.get_mut(&key) else {
                // Cannot happen (ring and map are kept in step); drop the stray key.
                self.ring.swap_remove(self.hand);
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
                self.hand += 1;
                continue;
            }
            let weight = slot.weight;
            self.map.remove(&key);
            self.bytes -= weight;
            self.ring.swap_remove(self.hand);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_hot_entries() {
        let c: Cache<u64, Vec<u8>> = Cache::new(16 * 1000);
        // Key 0 and its shard-mates get touched all the time.
        for k in 0..10_000u64 {
            c.insert(k, vec![0; 100], 100);
            assert!(c.bytes() <= 16 * 1000);
            let _ = c.get(&0);
        }
        assert!(c.get(&9_999).is_some());
        assert!(c.get(&0).is_some());
        // Too big for a shard: returned but not cached.
        let v = c.insert(u64::MAX, vec![1; 5000], 5000);
        assert_eq!(v.len(), 5000);
        assert!(c.get(&u64::MAX).is_none());
    }

    #[test]
    fn insert_race_returns_existing() {
        let c: Cache<u64, u32> = Cache::new(1 << 20);
        let a = c.insert(1, 10, 4);
        let b = c.insert(1, 20, 4);
        assert_eq!((*a, *b), (10, 10));
    }
}

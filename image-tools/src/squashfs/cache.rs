//! A bounded, sharded CLOCK cache of decompressed blocks.
//!
//! Callers look up, and on a miss read and decompress with no lock held, then
//! insert. Readers that go through [`Cache::claim`] also share the work: the
//! first to miss a key loads it, and others needing that same key wait for it
//! rather than decompressing it again (the prefetcher, page faults of an exec
//! and ranks of one job all want the same blocks at once). Nobody waits while
//! holding a claim, so waits cannot form a cycle.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

const SHARDS: usize = 16;

pub(crate) struct Cache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    hasher: RandomState,
    shard_budget: usize,
}

struct Shard<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys being loaded by a claim holder.
    inflight: HashMap<K, Arc<Flight<V>>>,
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
                        inflight: HashMap::new(),
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

    /// The cached value, or the right to load it (a [`Ticket`]), or a load in progress to wait for.
    pub(crate) fn claim(&self, key: K) -> Claim<'_, K, V> {
        let mut shard = self.shard(&key);
        if let Some(slot) = shard.map.get_mut(&key) {
            slot.referenced = true;
            return Claim::Ready(Arc::clone(&slot.value));
        }
        if let Some(f) = shard.inflight.get(&key) {
            return Claim::Wait(Arc::clone(f));
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(None),
            done: Condvar::new(),
        });
        shard.inflight.insert(key, Arc::clone(&flight));
        Claim::Mine(Ticket {
            cache: self,
            key,
            flight,
            finished: false,
        })
    }

    fn finish(&self, key: &K, flight: &Flight<V>, value: Option<Arc<V>>) {
        self.shard(key).inflight.remove(key);
        let mut st = flight.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = Some(value);
        flight.done.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes)
            .sum()
    }
}

pub(crate) enum Claim<'c, K: Hash + Eq + Copy, V> {
    Ready(Arc<V>),
    /// Load it, then [`Ticket::complete`]; dropping the ticket tells waiters it failed.
    Mine(Ticket<'c, K, V>),
    Wait(Arc<Flight<V>>),
}

/// A load in progress: `None` while loading, then `Some(Some(v))`, or `Some(None)` on failure.
pub(crate) struct Flight<V> {
    state: Mutex<Option<Option<Arc<V>>>>,
    done: Condvar,
}

impl<V> Flight<V> {
    /// The loaded value, or None when the loader failed (then load it yourself).
    pub(crate) fn wait(&self) -> Option<Arc<V>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = st.as_ref() {
                return v.clone();
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

pub(crate) struct Ticket<'c, K: Hash + Eq + Copy, V> {
    cache: &'c Cache<K, V>,
    key: K,
    flight: Arc<Flight<V>>,
    finished: bool,
}

impl<K: Hash + Eq + Copy, V> Ticket<'_, K, V> {
    /// Cache the loaded value and hand it to everyone waiting for it.
    pub(crate) fn complete(mut self, value: V, weight: usize) -> Arc<V> {
        let v = self.cache.insert(self.key, value, weight);
        self.cache
            .finish(&self.key, &self.flight, Some(Arc::clone(&v)));
        self.finished = true;
        v
    }
}

impl<K: Hash + Eq + Copy, V> Drop for Ticket<'_, K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.cache.finish(&self.key, &self.flight, None);
        }
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
    fn claims_share_one_load() {
        let c: Cache<u64, u32> = Cache::new(1 << 20);
        let Claim::Mine(t) = c.claim(5) else {
            panic!("first claim loads")
        };
        let Claim::Wait(f) = c.claim(5) else {
            panic!("second claim waits")
        };
        std::thread::scope(|s| {
            let waiter = s.spawn(|| f.wait());
            assert_eq!(*t.complete(42, 4), 42);
            assert_eq!(waiter.join().unwrap().map(|v| *v), Some(42));
        });
        assert!(matches!(c.claim(5), Claim::Ready(v) if *v == 42));
        // A dropped ticket tells waiters to load it themselves, and frees the key.
        let Claim::Mine(t) = c.claim(6) else { panic!() };
        let Claim::Wait(f) = c.claim(6) else { panic!() };
        drop(t);
        assert!(f.wait().is_none());
        assert!(matches!(c.claim(6), Claim::Mine(_)));
    }

    #[test]
    fn insert_race_returns_existing() {
        let c: Cache<u64, u32> = Cache::new(1 << 20);
        let a = c.insert(1, 10, 4);
        let b = c.insert(1, 20, 4);
        assert_eq!((*a, *b), (10, 10));
    }
}

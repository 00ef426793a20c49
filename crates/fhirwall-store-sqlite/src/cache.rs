//! A bounded cache of current versions (sealed bytes only), published by the writer in commit
//! order. Reads that hit it skip SQLite, whose reader connections drop their page caches at
//! every commit. It must never hand out a version older than one already published.

use std::collections::HashMap;
use std::sync::Mutex;

use fhirwall_store::StoredVersion;

const SHARDS: usize = 16;

struct Shard {
    entries: HashMap<String, StoredVersion>,
    bytes: usize,
    /// Bumped by every publish and eviction: a reader that looked before a bump may hold an
    /// older version than the cache has seen, so it must not insert.
    generation: u64,
}

/// The cache. `budget_bytes` bounds the sealed bytes it holds.
pub(crate) struct CurrentCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
}

fn key(tenant: &str, resource_type: &str, id: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + resource_type.len() + id.len() + 2);
    k.push_str(tenant);
    k.push('\u{1f}');
    k.push_str(resource_type);
    k.push('\u{1f}');
    k.push_str(id);
    k
}

fn size_of(version: &StoredVersion) -> usize {
    version.sealed_body.as_ref().map_or(0, Vec::len) + version.id.len() + 96
}

impl CurrentCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        CurrentCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        bytes: 0,
                        generation: 0,
                    })
                })
                .collect(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    fn shard(&self, key: &str) -> Option<&Mutex<Shard>> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.shards.get((hash % SHARDS as u64) as usize)
    }

    /// The cached current version, and the shard generation to pass to [`Self::fill`] on a miss.
    pub(crate) fn get(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
    ) -> (Option<StoredVersion>, u64) {
        let key = key(tenant, resource_type, id);
        let Some(shard) = self.shard(&key) else {
            return (None, 0);
        };
        match shard.lock() {
            Ok(shard) => (shard.entries.get(&key).cloned(), shard.generation),
            Err(_) => (None, 0),
        }
    }

    /// The writer publishes each version it committed, before it answers the request.
    pub(crate) fn publish(&self, version: &StoredVersion) {
        let key = key(&version.tenant, &version.resource_type, &version.id);
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else { return };
        shard.generation += 1;
        self.insert(&mut shard, key, version.clone());
    }

    /// A reader offers what it read from the database after a miss; it is kept only if nothing
    /// was published or evicted in the shard since the miss.
    pub(crate) fn fill(&self, version: &StoredVersion, generation: u64) {
        let key = key(&version.tenant, &version.resource_type, &version.id);
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else { return };
        if shard.generation == generation && !shard.entries.contains_key(&key) {
            self.insert(&mut shard, key, version.clone());
        }
    }

    fn insert(&self, shard: &mut Shard, key: String, version: StoredVersion) {
        let size = size_of(&version);
        if size > self.shard_budget {
            if let Some(old) = shard.entries.remove(&key) {
                shard.bytes -= size_of(&old);
            }
            return;
        }
        if let Some(old) = shard.entries.insert(key, version) {
            shard.bytes -= size_of(&old);
        }
        shard.bytes += size;
        if shard.bytes > self.shard_budget {
            // Crude but bounded: start the shard over. Hot entries come back on their next read.
            shard.entries.clear();
            shard.bytes = 0;
            shard.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fhirwall_store::Method;

    fn v(version: u64) -> StoredVersion {
        StoredVersion {
            tenant: "t".into(),
            resource_type: "Patient".into(),
            id: "a".into(),
            version,
            last_updated_micros: 0,
            method: Method::Update,
            sealed_body: Some(vec![0; 10]),
            seq: version,
        }
    }

    #[test]
    fn a_stale_fill_never_replaces_a_published_version() {
        let cache = CurrentCache::new(1 << 20);
        let (hit, generation) = cache.get("t", "Patient", "a");
        assert!(hit.is_none());
        cache.publish(&v(2));
        cache.fill(&v(1), generation);
        assert_eq!(cache.get("t", "Patient", "a").0.unwrap().version, 2);
        // An eviction between the miss and the fill also blocks the fill.
        let small = CurrentCache::new(SHARDS * 200);
        let (_, generation) = small.get("t", "Patient", "a");
        small.publish(&v(5));
        small.fill(&v(4), generation);
        assert_ne!(small.get("t", "Patient", "a").0.map(|x| x.version), Some(4));
    }

    #[test]
    fn fills_after_a_clean_miss_are_kept() {
        let cache = CurrentCache::new(1 << 20);
        let (_, generation) = cache.get("t", "Patient", "a");
        cache.fill(&v(1), generation);
        assert_eq!(cache.get("t", "Patient", "a").0.unwrap().version, 1);
    }
}

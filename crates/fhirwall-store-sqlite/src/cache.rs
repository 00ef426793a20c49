//! A bounded cache of current versions (sealed bytes and tags only) with their pointer tags,
//! published by the writer in commit order. Reads that hit it skip SQLite, whose reader
//! connections drop their page caches at every commit. It must never hand out a version (or
//! pointer tag) older than one already published.

use std::collections::HashMap;
use std::sync::Mutex;

use fhirwall_store::{CurrentVersion, ResourceKey};

const SHARDS: usize = 16;

struct Shard {
    entries: HashMap<ResourceKey, CurrentVersion>,
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

fn size_of(current: &CurrentVersion) -> usize {
    let version = &current.version;
    version.sealed_body.as_ref().map_or(0, Vec::len)
        + version.key.id.as_str().len()
        + version.key.tenant.as_str().len()
        + 160
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

    fn shard(&self, key: &ResourceKey) -> Option<&Mutex<Shard>> {
        // FNV-1a over the key's parts, with a separator no part can contain.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [
            key.tenant.as_str(),
            key.resource_type.as_str(),
            key.id.as_str(),
        ] {
            for byte in part.bytes().chain([b'/']) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        self.shards.get((hash % SHARDS as u64) as usize)
    }

    /// The cached current version, and the shard generation to pass to [`Self::fill`] on a miss.
    pub(crate) fn get(&self, key: &ResourceKey) -> (Option<CurrentVersion>, u64) {
        let Some(shard) = self.shard(key) else {
            return (None, 0);
        };
        match shard.lock() {
            Ok(shard) => (shard.entries.get(key).cloned(), shard.generation),
            Err(_) => (None, 0),
        }
    }

    /// The writer publishes each version it committed, before it answers the request.
    pub(crate) fn publish(&self, current: &CurrentVersion) {
        let key = &current.version.key;
        let Some(shard) = self.shard(key) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else { return };
        shard.generation += 1;
        self.insert(&mut shard, current.clone());
    }

    /// A reader offers what it read from the database after a miss; it is kept only if nothing
    /// was published or evicted in the shard since the miss.
    pub(crate) fn fill(&self, current: &CurrentVersion, generation: u64) {
        let key = &current.version.key;
        let Some(shard) = self.shard(key) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else { return };
        if shard.generation == generation && !shard.entries.contains_key(key) {
            self.insert(&mut shard, current.clone());
        }
    }

    fn insert(&self, shard: &mut Shard, current: CurrentVersion) {
        let key = current.version.key.clone();
        let size = size_of(&current);
        if size > self.shard_budget {
            if let Some(old) = shard.entries.remove(&key) {
                shard.bytes -= size_of(&old);
            }
            return;
        }
        if let Some(old) = shard.entries.insert(key, current) {
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
    use fhirwall_store::{IntegrityTag, Method, ResourceId, ResourceType, StoredVersion, TenantId};

    fn key() -> ResourceKey {
        ResourceKey {
            tenant: TenantId::default_tenant(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            id: ResourceId::parse("a").unwrap(),
        }
    }

    fn v(version: u64) -> CurrentVersion {
        CurrentVersion {
            version: StoredVersion {
                key: key(),
                version,
                last_updated_micros: 0,
                method: Method::Update,
                sealed_body: Some(vec![0; 10]),
                seq: version,
                tag: Some(IntegrityTag([version as u8; 32])),
            },
            pointer_tag: Some(IntegrityTag([version as u8 + 100; 32])),
        }
    }

    #[test]
    fn a_stale_fill_never_replaces_a_published_version() {
        let cache = CurrentCache::new(1 << 20);
        let (hit, generation) = cache.get(&key());
        assert!(hit.is_none());
        cache.publish(&v(2));
        cache.fill(&v(1), generation);
        let hit = cache.get(&key()).0.unwrap();
        assert_eq!(hit.version.version, 2);
        assert_eq!(
            hit.pointer_tag,
            v(2).pointer_tag,
            "the pointer tag comes with it"
        );
        // An eviction between the miss and the fill also blocks the fill.
        let small = CurrentCache::new(SHARDS * 300);
        let (_, generation) = small.get(&key());
        small.publish(&v(5));
        small.fill(&v(4), generation);
        assert_ne!(small.get(&key()).0.map(|x| x.version.version), Some(4));
    }

    #[test]
    fn fills_after_a_clean_miss_are_kept() {
        let cache = CurrentCache::new(1 << 20);
        let (_, generation) = cache.get(&key());
        cache.fill(&v(1), generation);
        let hit = cache.get(&key()).0.unwrap();
        assert_eq!(hit.version.version, 1);
        assert_eq!(hit.pointer_tag, v(1).pointer_tag);
    }
}

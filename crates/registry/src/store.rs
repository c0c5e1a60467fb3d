//! The data layer: every data key's publishers and version, sharded over slots, and the
//! payloads pushed for them (encoded once per key, version and zone; compressed once).
//!
//! A key's version grows at every change and is never reused, even across a restart of the
//! registry (versions start from the clock, in microseconds, and move on from the last one
//! given). A key stays, empty, once its last publisher leaves, so a subscriber never sees its
//! version go back. Changed keys are gathered into one set ([`Store::take_changed`]) that the
//! session layer drains as fast as it can: under load one drain carries many changes, and a
//! key changed many times between two drains is pushed once.
//!
//! Owns what is published and at which version. Must not know connections, subscribers or the
//! wire stream (the session layer does), nor check names (`names` does, before anything here).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use limits::{
    REGISTRY_KEYS_MAX, REGISTRY_PAYLOAD_CACHE_BYTES_MAX, REGISTRY_PUBLISHERS_MAX,
    REGISTRY_PUBLISHERS_PER_KEY_MAX, REGISTRY_PUSH_PLAIN_BYTES_MAX,
};
use tokio::sync::Notify;

use crate::names::DataKey;

/// zstd's level for pushes: each payload is compressed once and sent to many subscribers.
const ZSTD_LEVEL: i32 = 6;

/// One publisher: the client process and its name for the registration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublisherId {
    pub client_id: Arc<str>,
    pub registration_id: Box<str>,
}

/// What one publisher published, ready to be pushed.
#[derive(Debug)]
pub struct Published {
    pub zone: Arc<str>,
    /// The stream that registered it: only that stream's end removes it (a client that
    /// reconnected has registered it again on its new stream).
    pub stream: u64,
    /// The `PublishedRecord` message, encoded.
    pub encoded: Box<[u8]>,
}

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("this data key already has {REGISTRY_PUBLISHERS_PER_KEY_MAX} publishers")]
    KeyFull,
    #[error("this data key's set would pass {REGISTRY_PUSH_PLAIN_BYTES_MAX} bytes")]
    KeyTooLarge,
    #[error("the registry already holds {REGISTRY_KEYS_MAX} data keys")]
    TooManyKeys,
    #[error("the registry already holds {REGISTRY_PUBLISHERS_MAX} publishers")]
    TooManyPublishers,
}

/// What the payload cache holds, counted by the payloads themselves: a payload adds its bytes
/// when made (and its compressed form when kept) and takes them back when dropped, so the count
/// is exact whoever drops it last (the cache, or a push still on its way).
#[derive(Debug, Default)]
struct CacheCounters {
    bytes: AtomicUsize,
    compressions: AtomicU64,
}

/// One key's set as pushed at one version, to one zone or to all.
#[derive(Debug)]
pub struct Payload {
    pub version: u64,
    pub records: u32,
    /// A `Records` message.
    pub plain: Bytes,
    zstd: OnceLock<Option<Bytes>>,
    /// When the key last changed (the change this payload carries).
    pub changed_at: Instant,
    counters: Arc<CacheCounters>,
}

impl Payload {
    /// The payload compressed, made by the first caller (the others wait for it); `None` when
    /// compressing does not make it smaller (then it goes plain).
    pub fn zstd(&self) -> Option<&Bytes> {
        self.zstd
            .get_or_init(|| {
                let compressed = zstd::bulk::compress(&self.plain, ZSTD_LEVEL).ok()?;
                self.counters.compressions.fetch_add(1, Ordering::Relaxed);
                let kept = compressed.len() < self.plain.len();
                if kept {
                    self.counters
                        .bytes
                        .fetch_add(compressed.len(), Ordering::Relaxed);
                }
                kept.then(|| Bytes::from(compressed))
            })
            .as_ref()
    }
}

impl Payload {
    /// The compressed form if it was made already (`Some(None)`: made, and not smaller).
    pub fn zstd_if_made(&self) -> Option<Option<Bytes>> {
        self.zstd.get().cloned()
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        let compressed = self
            .zstd
            .get()
            .and_then(Option::as_ref)
            .map_or(0, Bytes::len);
        self.counters
            .bytes
            .fetch_sub(self.plain.len() + compressed, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Datum {
    version: u64,
    changed_at: Instant,
    publishers: BTreeMap<PublisherId, Published>,
    /// Sum of the publishers' encoded sizes with their framing: the plain payload's size.
    plain_bytes: usize,
    /// Payloads of this version made so far, by zone (`None`: every zone).
    payloads: Vec<(Option<Arc<str>>, Arc<Payload>)>,
}

impl Datum {
    fn new() -> Datum {
        Datum {
            version: 0,
            changed_at: Instant::now(),
            publishers: BTreeMap::new(),
            plain_bytes: 0,
            payloads: Vec::new(),
        }
    }
}

/// Bytes a record takes in a `Records` message: its tag, length and body.
fn framed_len(encoded: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(encoded as u64) + encoded
}

#[derive(Debug, Default)]
struct Slot {
    datums: foldhash::HashMap<DataKey, Datum>,
}

/// Versions that only grow: at least the clock in microseconds, and above the last one given.
#[derive(Debug, Default)]
struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// Every key's publishers, in `slots` shards each behind its own lock.
#[derive(Debug)]
pub struct Store {
    slots: Box<[Mutex<Slot>]>,
    clock: VersionClock,
    keys: AtomicUsize,
    publishers: AtomicUsize,
    changed: Mutex<HashSet<DataKey>>,
    changes: Notify,
    cache: Arc<CacheCounters>,
}

impl Store {
    pub fn new(slots: usize) -> Store {
        assert!(slots >= 1, "a store needs a slot");
        Store {
            slots: (0..slots).map(|_| Mutex::default()).collect(),
            clock: VersionClock::default(),
            keys: AtomicUsize::new(0),
            publishers: AtomicUsize::new(0),
            changed: Mutex::default(),
            changes: Notify::new(),
            cache: Arc::default(),
        }
    }

    fn slot(&self, key: &DataKey) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[key.slot(self.slots.len())]
            .lock()
            .expect("never poisoned")
    }

    /// Publishers held now.
    pub fn publishers(&self) -> usize {
        self.publishers.load(Ordering::Relaxed)
    }

    /// Data keys held now (empty ones included).
    pub fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Payloads compressed so far (each key, version and zone once, however many receive it).
    pub fn compressions(&self) -> u64 {
        self.cache.compressions.load(Ordering::Relaxed)
    }

    /// Bytes of payloads alive now (cached, or on their way to a client).
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes.load(Ordering::Relaxed)
    }

    /// Stores `published` as `id`'s record under `key`, replacing `id`'s earlier one there.
    /// Every limit is checked before anything changes.
    pub fn put(
        &self,
        key: &DataKey,
        id: PublisherId,
        published: Published,
    ) -> Result<(), StoreError> {
        let mut slot = self.slot(key);
        let (replaced, held, plain_bytes) = match slot.datums.get(key) {
            Some(datum) => (
                datum.publishers.get(&id).map(|old| old.encoded.len()),
                datum.publishers.len(),
                datum.plain_bytes,
            ),
            None => (None, 0, 0),
        };
        let plain_bytes =
            plain_bytes - replaced.map_or(0, framed_len) + framed_len(published.encoded.len());
        if replaced.is_none() {
            if held >= REGISTRY_PUBLISHERS_PER_KEY_MAX {
                return Err(StoreError::KeyFull);
            }
            if self.publishers.load(Ordering::Relaxed) >= REGISTRY_PUBLISHERS_MAX {
                return Err(StoreError::TooManyPublishers);
            }
        }
        if plain_bytes > REGISTRY_PUSH_PLAIN_BYTES_MAX {
            return Err(StoreError::KeyTooLarge);
        }
        if !slot.datums.contains_key(key) {
            if self.keys.load(Ordering::Relaxed) >= REGISTRY_KEYS_MAX {
                return Err(StoreError::TooManyKeys);
            }
            self.keys.fetch_add(1, Ordering::Relaxed);
            slot.datums.insert(key.clone(), Datum::new());
        }
        if replaced.is_none() {
            self.publishers.fetch_add(1, Ordering::Relaxed);
        }
        let datum = slot.datums.get_mut(key).expect("present or just made");
        datum.publishers.insert(id, published);
        datum.plain_bytes = plain_bytes;
        self.bump(datum);
        drop(slot);
        self.note_changed(key);
        Ok(())
    }

    /// Makes `key` exist, empty at a new version, if it does not (nothing happens when the
    /// registry holds `REGISTRY_KEYS_MAX` keys already).
    pub fn ensure(&self, key: &DataKey) {
        let mut slot = self.slot(key);
        if slot.datums.contains_key(key) || self.keys.load(Ordering::Relaxed) >= REGISTRY_KEYS_MAX {
            return;
        }
        self.keys.fetch_add(1, Ordering::Relaxed);
        let datum = slot.datums.entry(key.clone()).or_insert_with(Datum::new);
        self.bump(datum);
        drop(slot);
        self.note_changed(key);
    }

    /// Forgets the keys that hold no publisher, changed longer than `quiet` ago, and that
    /// `watched` says nobody subscribes to (a key created again later gets a newer version
    /// all the same: versions come from one clock). How many were forgotten.
    pub fn sweep_empty(
        &self,
        quiet: std::time::Duration,
        watched: impl Fn(&DataKey) -> bool,
    ) -> usize {
        let mut forgotten = 0;
        for slot in self.slots.iter() {
            let mut slot = slot.lock().expect("never poisoned");
            slot.datums.retain(|key, datum| {
                let keep = !datum.publishers.is_empty()
                    || datum.changed_at.elapsed() < quiet
                    || watched(key);
                forgotten += usize::from(!keep);
                keep
            });
        }
        self.keys.fetch_sub(forgotten, Ordering::Relaxed);
        forgotten
    }

    /// Removes `id`'s record under `key` if stream `stream` registered it; true if it did.
    pub fn remove(&self, key: &DataKey, id: &PublisherId, stream: u64) -> bool {
        let mut slot = self.slot(key);
        let Some(datum) = slot.datums.get_mut(key) else {
            return false;
        };
        if datum
            .publishers
            .get(id)
            .is_none_or(|old| old.stream != stream)
        {
            return false;
        }
        let old = datum.publishers.remove(id).expect("just seen");
        datum.plain_bytes -= framed_len(old.encoded.len());
        self.publishers.fetch_sub(1, Ordering::Relaxed);
        self.bump(datum);
        drop(slot);
        self.note_changed(key);
        true
    }

    fn bump(&self, datum: &mut Datum) {
        datum.version = self.clock.next();
        datum.changed_at = Instant::now();
        datum.payloads.clear();
    }

    fn note_changed(&self, key: &DataKey) {
        self.changed
            .lock()
            .expect("never poisoned")
            .insert(key.clone());
        self.changes.notify_one();
    }

    /// Waits until some key has changed since the last [`Store::take_changed`].
    pub async fn changes(&self) {
        self.changes.notified().await;
    }

    /// The keys changed since the last call, each once.
    pub fn take_changed(&self) -> HashSet<DataKey> {
        std::mem::take(&mut *self.changed.lock().expect("never poisoned"))
    }

    /// `key`'s version now (0: nothing was ever published under it).
    pub fn version(&self, key: &DataKey) -> u64 {
        self.slot(key)
            .datums
            .get(key)
            .map_or(0, |datum| datum.version)
    }

    /// `key`'s set as of now for subscribers in `zone` (`None`: every zone), made once per
    /// version and zone; `None` while nothing was ever published under `key`.
    pub fn payload(&self, key: &DataKey, zone: Option<&Arc<str>>) -> Option<Arc<Payload>> {
        let mut slot = self.slot(key);
        let datum = slot.datums.get_mut(key)?;
        if let Some((_, payload)) = datum.payloads.iter().find(|(z, _)| z.as_ref() == zone) {
            return Some(Arc::clone(payload));
        }
        let mut plain = Vec::with_capacity(if zone.is_none() { datum.plain_bytes } else { 0 });
        let mut records = 0u32;
        for published in datum.publishers.values() {
            if zone.is_some_and(|zone| *zone != published.zone) {
                continue;
            }
            records += 1;
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut plain);
            prost::encoding::encode_varint(published.encoded.len() as u64, &mut plain);
            plain.extend_from_slice(&published.encoded);
        }
        let payload = Arc::new(Payload {
            version: datum.version,
            records,
            plain: Bytes::from(plain),
            zstd: OnceLock::new(),
            changed_at: datum.changed_at,
            counters: Arc::clone(&self.cache),
        });
        self.cache
            .bytes
            .fetch_add(payload.plain.len(), Ordering::Relaxed);
        datum.payloads.push((zone.cloned(), Arc::clone(&payload)));
        if self.cached_bytes() > REGISTRY_PAYLOAD_CACHE_BYTES_MAX {
            drop(slot);
            self.drop_cached();
        }
        Some(payload)
    }

    /// Drops every cached payload (they are made again on demand): the cache's only bound.
    fn drop_cached(&self) {
        for slot in self.slots.iter() {
            let mut slot = slot.lock().expect("never poisoned");
            for datum in slot.datums.values_mut() {
                datum.payloads.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto;

    fn key(data_id: &str) -> DataKey {
        DataKey::new("tenant", "default", data_id)
    }

    fn record(client: &str, registration: &str, zone: &str, address: &str) -> Published {
        let encoded = proto::PublishedRecord {
            client_id: client.into(),
            registration_id: registration.into(),
            zone: zone.into(),
            record: Some(proto::Record {
                address: address.into(),
                attributes: vec![],
            }),
        }
        .encode_to_vec();
        Published {
            zone: zone.into(),
            stream: 1,
            encoded: encoded.into(),
        }
    }

    fn id(client: &str, registration: &str) -> PublisherId {
        PublisherId {
            client_id: client.into(),
            registration_id: registration.into(),
        }
    }

    fn addresses(payload: &Payload) -> Vec<String> {
        proto::Records::decode(payload.plain.clone())
            .expect("a Records message")
            .records
            .into_iter()
            .map(|r| r.record.expect("a record").address)
            .collect()
    }

    #[test]
    fn a_key_is_versioned_filtered_by_zone_and_replaced_not_duplicated() {
        let store = Store::new(8);
        let k = key("pay.api");
        assert!(store.payload(&k, None).is_none());
        store
            .put(&k, id("c1", "a"), record("c1", "a", "z1", "10.0.0.1:80"))
            .unwrap();
        let first = store.version(&k);
        store
            .put(&k, id("c2", "a"), record("c2", "a", "z2", "10.0.0.2:80"))
            .unwrap();
        store
            .put(&k, id("c1", "a"), record("c1", "a", "z1", "10.0.0.3:80"))
            .unwrap();
        assert!(store.version(&k) > first, "versions grow");
        assert_eq!(store.publishers(), 2);
        let all = store.payload(&k, None).unwrap();
        assert_eq!(addresses(&all), ["10.0.0.3:80", "10.0.0.2:80"]);
        assert_eq!(all.plain.len(), {
            let slot = store.slot(&k);
            slot.datums[&k].plain_bytes
        });
        let z2 = store.payload(&k, Some(&Arc::from("z2"))).unwrap();
        assert_eq!(addresses(&z2), ["10.0.0.2:80"]);
        assert!(
            Arc::ptr_eq(&all, &store.payload(&k, None).unwrap()),
            "made once"
        );
        assert_eq!(
            store.take_changed().len(),
            1,
            "one key, changed thrice, told once"
        );
    }

    #[test]
    fn only_the_registering_stream_removes_and_an_empty_key_keeps_its_version() {
        let store = Store::new(8);
        let k = key("pay.api");
        store
            .put(&k, id("c1", "a"), record("c1", "a", "z1", "10.0.0.1:80"))
            .unwrap();
        assert!(
            !store.remove(&k, &id("c1", "a"), 2),
            "another stream's end removes nothing"
        );
        let before = store.version(&k);
        assert!(store.remove(&k, &id("c1", "a"), 1));
        assert!(store.version(&k) > before);
        assert_eq!(store.publishers(), 0);
        let empty = store.payload(&k, None).unwrap();
        assert_eq!((empty.records, empty.plain.len()), (0, 0));
    }

    #[test]
    fn a_compressed_payload_is_made_once_and_a_change_makes_a_new_one() {
        let store = Store::new(8);
        let k = key("big");
        for n in 0..500 {
            let registration = format!("r{n}");
            let address = format!("10.1.{}.{}:8080", n / 250, n % 250);
            store
                .put(
                    &k,
                    id("c", &registration),
                    record("c", &registration, "z", &address),
                )
                .unwrap();
        }
        let payload = store.payload(&k, None).unwrap();
        let compressed = payload.zstd().expect("smaller compressed").clone();
        assert!(
            compressed.len() * 5 < payload.plain.len(),
            "{} of {}",
            compressed.len(),
            payload.plain.len()
        );
        assert_eq!(payload.zstd().unwrap(), &compressed);
        assert_eq!(store.compressions(), 1);
        assert_eq!(store.cached_bytes(), payload.plain.len() + compressed.len());
        store
            .put(&k, id("c", "r0"), record("c", "r0", "z", "10.9.9.9:1"))
            .unwrap();
        let newer = store.payload(&k, None).unwrap();
        assert!(newer.version > payload.version && !Arc::ptr_eq(&newer, &payload));
        // The old payload counts until its last holder (here: this test) drops it.
        let both = newer.plain.len() + payload.plain.len() + compressed.len();
        assert_eq!(store.cached_bytes(), both);
        drop(payload);
        assert_eq!(store.cached_bytes(), newer.plain.len());
        // An empty set does not compress smaller: nothing kept, nothing counted.
        let empty = key("empty");
        store
            .put(&empty, id("c", "x"), record("c", "x", "z", "a"))
            .unwrap();
        assert!(store.remove(&empty, &id("c", "x"), 1));
        let nothing = store.payload(&empty, None).unwrap();
        assert!(nothing.zstd().is_none());
        assert_eq!(store.cached_bytes(), newer.plain.len());
    }

    #[test]
    fn empty_quiet_unwatched_keys_are_forgotten_and_come_back_newer() {
        let store = Store::new(4);
        let (a, b) = (key("a"), key("b"));
        store
            .put(&a, id("c", "1"), record("c", "1", "z", "x"))
            .unwrap();
        store
            .put(&b, id("c", "2"), record("c", "2", "z", "y"))
            .unwrap();
        assert!(store.remove(&a, &id("c", "1"), 1));
        let before = store.version(&a);
        assert_eq!(
            store.sweep_empty(std::time::Duration::from_secs(60), |_| false),
            0,
            "not quiet yet"
        );
        assert_eq!(
            store.sweep_empty(std::time::Duration::ZERO, |key| *key == a),
            0,
            "watched"
        );
        assert_eq!(store.sweep_empty(std::time::Duration::ZERO, |_| false), 1);
        assert_eq!((store.keys(), store.version(&a)), (1, 0));
        // A subscriber still holding its old set has the key made again, empty and newer.
        store.take_changed();
        store.ensure(&a);
        let empty = store.payload(&a, None).unwrap();
        assert!(empty.version > before && empty.records == 0);
        assert_eq!(store.take_changed().len(), 1, "and pushed");
        store.ensure(&a);
        assert_eq!(
            store.version(&a),
            empty.version,
            "an existing key is left alone"
        );
        store
            .put(&a, id("c", "1"), record("c", "1", "z", "x"))
            .unwrap();
        assert!(store.version(&a) > empty.version);
    }

    #[test]
    fn a_key_refuses_what_would_pass_its_limits() {
        let store = Store::new(1);
        let k = key("huge");
        let big = "x".repeat(200);
        let mut refused = None;
        for n in 0..REGISTRY_PUBLISHERS_PER_KEY_MAX + 1 {
            let registration = format!("r{n}");
            let mut published = record("c", &registration, "z", &big);
            published.encoded = vec![7u8; 1300].into();
            if let Err(error) = store.put(&k, id("c", &registration), published) {
                refused = Some((n, error));
                break;
            }
        }
        let (at, error) = refused.expect("refused before the end");
        assert_eq!(error, StoreError::KeyTooLarge);
        assert_eq!(store.publishers(), at, "nothing stored by the refusal");
        // A refused first record leaves no key behind.
        let mut published = record("c", "r", "z", "a");
        published.encoded = vec![7u8; REGISTRY_PUSH_PLAIN_BYTES_MAX].into();
        let lone = key("lone");
        assert_eq!(
            store.put(&lone, id("c", "r"), published),
            Err(StoreError::KeyTooLarge)
        );
        assert_eq!((store.keys(), store.version(&lone)), (1, 0));
    }

    #[test]
    fn versions_only_grow_even_when_asked_for_quickly() {
        let clock = VersionClock::default();
        let mut last = 0;
        for _ in 0..10_000 {
            let next = clock.next();
            assert!(next > last);
            last = next;
        }
    }
}

//! Shared strings for the flow hot path.
//!
//! A cluster has a few hundred namespaces, pods and label sets but streams millions of flows
//! that repeat them. The [`Interner`] turns each distinct string (and each distinct list of
//! strings, such as an endpoint's labels) into one reference-counted allocation that every
//! flow shares, so a million stored flows hold one copy of "ai-training", not a million.
//!
//! Look-ups go by raw bytes: a string already interned is found without UTF-8 validation or
//! allocation; only a new string is validated and copied. The interner is bounded: once it
//! holds `capacity` entries, new strings are still returned (as private copies) but no longer
//! remembered, so hostile high-cardinality input cannot grow it without limit.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;

/// An interned string. Cloning is a reference-count increment.
pub type Sym = Arc<str>;

/// An interned list of strings (labels, DNS names, query types).
pub type SymList = Arc<[Sym]>;

/// The default number of distinct strings (and, separately, lists) remembered.
pub const DEFAULT_CAPACITY: usize = 262_144;

/// A string that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 in a string field")]
pub struct InvalidUtf8;

/// Deduplicates strings and string lists; one per flow decoder, never shared across threads.
#[derive(Debug)]
pub struct Interner {
    hasher: foldhash::fast::RandomState,
    strings: HashTable<Sym>,
    lists: HashTable<(u64, SymList)>,
    capacity: usize,
    empty: Sym,
    empty_list: SymList,
    overflow: u64,
}

impl Default for Interner {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Interner {
    /// An interner that remembers at most `capacity` strings and `capacity` lists.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            strings: HashTable::new(),
            lists: HashTable::new(),
            capacity,
            empty: Arc::from(""),
            empty_list: Arc::from(Vec::new()),
            overflow: 0,
        }
    }

    /// The shared empty string.
    pub fn empty(&self) -> Sym {
        self.empty.clone()
    }

    /// The shared empty list.
    pub fn empty_list(&self) -> SymList {
        self.empty_list.clone()
    }

    /// How many strings were handed out un-shared because the interner was full.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Distinct strings remembered.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// True when nothing has been interned.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(bytes);
        h.finish()
    }

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Sym {
        // A `&str` is valid UTF-8, so the error arm never runs.
        self.intern_bytes(s.as_bytes())
            .unwrap_or_else(|InvalidUtf8| Arc::from(s))
    }

    /// The shared copy of `bytes`, validated as UTF-8 only when it is new.
    pub fn intern_bytes(&mut self, bytes: &[u8]) -> Result<Sym, InvalidUtf8> {
        if bytes.is_empty() {
            return Ok(self.empty.clone());
        }
        let hash = self.hash_bytes(bytes);
        if let Some(found) = self.strings.find(hash, |s| s.as_bytes() == bytes) {
            return Ok(found.clone());
        }
        let s: Sym = Arc::from(std::str::from_utf8(bytes).map_err(|_| InvalidUtf8)?);
        if self.strings.len() < self.capacity {
            let hasher = self.hasher.clone();
            self.strings.insert_unique(hash, s.clone(), move |v| {
                let mut h = hasher.build_hasher();
                h.write(v.as_bytes());
                h.finish()
            });
        } else {
            self.overflow += 1;
        }
        Ok(s)
    }

    /// The shared copy of a list of strings given as raw byte slices.
    pub fn intern_list<'a, I>(&mut self, items: I) -> Result<SymList, InvalidUtf8>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        let mut h = self.hasher.build_hasher();
        let mut n = 0usize;
        for item in items.clone() {
            h.write_usize(item.len());
            h.write(item);
            n += 1;
        }
        if n == 0 {
            return Ok(self.empty_list.clone());
        }
        let hash = h.finish();
        let same = |stored: &(u64, SymList)| {
            stored.0 == hash
                && stored.1.len() == n
                && stored
                    .1
                    .iter()
                    .zip(items.clone())
                    .all(|(a, b)| a.as_bytes() == b)
        };
        if let Some((_, found)) = self.lists.find(hash, same) {
            return Ok(found.clone());
        }
        let list: SymList = items
            .map(|b| self.intern_bytes(b))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        if self.lists.len() < self.capacity {
            self.lists
                .insert_unique(hash, (hash, list.clone()), |stored| stored.0);
        } else {
            self.overflow += 1;
        }
        Ok(list)
    }
}

/// The default number of distinct encodings a [`BytesMemo`] remembers.
pub const DEFAULT_MEMO_CAPACITY: usize = 65_536;

/// Remembers values built from their encoded bytes, so the same bytes (an endpoint as Hubble
/// encodes it, for example) yield the same shared value without being decoded again. Bounded
/// like the [`Interner`]: when full, new values are built and returned but not remembered.
#[derive(Debug)]
pub struct BytesMemo<T> {
    hasher: foldhash::fast::RandomState,
    table: HashTable<(u64, Box<[u8]>, Arc<T>)>,
    capacity: usize,
}

impl<T> Default for BytesMemo<T> {
    fn default() -> Self {
        BytesMemo::with_capacity(DEFAULT_MEMO_CAPACITY)
    }
}

impl<T> BytesMemo<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        BytesMemo {
            hasher: foldhash::fast::RandomState::default(),
            table: HashTable::new(),
            capacity,
        }
    }

    /// Distinct encodings remembered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The value for `key`, built by `make` the first time.
    pub fn get_or_try_insert<E>(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        let hash = h.finish();
        if let Some((_, _, value)) = self.table.find(hash, |(h, k, _)| *h == hash && &**k == key) {
            return Ok(value.clone());
        }
        let value = Arc::new(make()?);
        if self.table.len() < self.capacity {
            self.table
                .insert_unique(hash, (hash, key.into(), value.clone()), |(h, _, _)| *h);
        }
        Ok(value)
    }
}

/// Values by interned string, for per-flow look-ups by a field that repeats from flow to flow
/// (a source namespace): the last key asked is remembered with its slot and compared by
/// pointer, so a run of flows with the same interned string hashes it once. Keys are never
/// removed. An equal string in another allocation finds the same value through the map.
#[derive(Debug)]
pub struct Slots<V> {
    slots: crate::common::hash::FastMap<Sym, usize>,
    values: Vec<V>,
    last: Option<(Sym, usize)>,
}

impl<V> Default for Slots<V> {
    fn default() -> Self {
        Self {
            slots: Default::default(),
            values: Vec::new(),
            last: None,
        }
    }
}

impl<V: Default> Slots<V> {
    /// The value of `key`, made with `Default` the first time.
    pub fn get_or_default(&mut self, key: &Sym) -> &mut V {
        let slot = match &self.last {
            Some((last, slot)) if Arc::ptr_eq(last, key) => *slot,
            _ => {
                let slot = match self.slots.get(key) {
                    Some(slot) => *slot,
                    None => {
                        self.values.push(V::default());
                        self.slots.insert(key.clone(), self.values.len() - 1);
                        self.values.len() - 1
                    }
                };
                self.last = Some((key.clone(), slot));
                slot
            }
        };
        &mut self.values[slot]
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.slots.get(key).map(|slot| &self.values[*slot])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_strings_share_one_allocation() {
        let mut i = Interner::default();
        let a = i.intern("ai-training");
        let b = i.intern_bytes(b"ai-training").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn lists_are_shared_and_order_matters() {
        let mut i = Interner::default();
        let l1 = i
            .intern_list([b"k8s:app=a".as_slice(), b"k8s:x=y"].into_iter())
            .unwrap();
        let l2 = i
            .intern_list([b"k8s:app=a".as_slice(), b"k8s:x=y"].into_iter())
            .unwrap();
        let l3 = i
            .intern_list([b"k8s:x=y".as_slice(), b"k8s:app=a"].into_iter())
            .unwrap();
        assert!(Arc::ptr_eq(&l1, &l2));
        assert!(!Arc::ptr_eq(&l1, &l3));
        assert_eq!(&*l3[0], "k8s:x=y");
        // The elements themselves are shared too.
        assert!(Arc::ptr_eq(&l1[0], &l3[1]));
    }

    #[test]
    fn memo_builds_once_per_encoding_and_stays_bounded() {
        let mut m: BytesMemo<String> = BytesMemo::with_capacity(1);
        let mut builds = 0;
        let mut get = |m: &mut BytesMemo<String>, k: &[u8]| {
            m.get_or_try_insert(k, || {
                builds += 1;
                Ok::<_, ()>(String::from_utf8_lossy(k).into_owned())
            })
            .unwrap()
        };
        let a = get(&mut m, b"ep-1");
        let b = get(&mut m, b"ep-1");
        assert!(Arc::ptr_eq(&a, &b));
        let c = get(&mut m, b"ep-2");
        let d = get(&mut m, b"ep-2");
        assert_eq!((c.as_str(), d.as_str()), ("ep-2", "ep-2"));
        assert!(!Arc::ptr_eq(&c, &d), "a full memo does not remember");
        assert_eq!(m.len(), 1);
        assert_eq!(builds, 3);
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let mut i = Interner::default();
        assert_eq!(i.intern_bytes(&[0xff, 0xfe]), Err(InvalidUtf8));
        assert!(i.intern_list([[0xc3u8].as_slice()].into_iter()).is_err());
    }

    #[test]
    fn a_full_interner_stops_remembering_but_still_answers() {
        let mut i = Interner::with_capacity(2);
        i.intern("a");
        i.intern("b");
        let c1 = i.intern("c");
        let c2 = i.intern("c");
        assert_eq!(&*c1, "c");
        assert!(!Arc::ptr_eq(&c1, &c2));
        assert_eq!(i.len(), 2);
        assert_eq!(i.overflow(), 2);
    }

    #[test]
    fn slots_find_a_key_by_pointer_or_by_text() {
        let mut slots: Slots<u32> = Slots::default();
        let (a, b): (Sym, Sym) = ("ai-training".into(), "production".into());
        let a2: Sym = "ai-training".into();
        *slots.get_or_default(&a) += 1;
        *slots.get_or_default(&a) += 1;
        *slots.get_or_default(&b) += 10;
        // Equal text in another allocation, asked right after its twin and after another.
        *slots.get_or_default(&a2) += 1;
        *slots.get_or_default(&b) += 10;
        *slots.get_or_default(&a) += 1;
        assert_eq!(slots.get("ai-training"), Some(&4));
        assert_eq!(slots.get("production"), Some(&20));
        assert_eq!(slots.get("other"), None);
        assert_eq!(slots.values.len(), 2);
    }
}

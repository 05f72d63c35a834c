//! What `/metrics` reports of the process's memory: its resident set, from `/proc`, and what
//! the allocator counts of its heap. The binary installs a reader for the heap when its
//! allocator can tell (jemalloc, feature `jemalloc`); without one the heap is not reported.

use std::sync::OnceLock;

/// The heap, as the allocator counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Bytes held in live allocations.
    pub allocated: u64,
    /// Bytes of the allocator's pages resident in memory: beyond `allocated`, its metadata
    /// and the freed pages it has not given back yet.
    pub resident: u64,
}

static READER: OnceLock<fn() -> Option<Heap>> = OnceLock::new();

/// Makes `reader` the source of [`heap`]; the first call wins.
pub fn install(reader: fn() -> Option<Heap>) {
    let _ = READER.set(reader);
}

/// The heap now, when a reader is installed and answers.
pub fn heap() -> Option<Heap> {
    READER.get().and_then(|read| read())
}

/// The process's resident set in bytes (`VmRSS` of `/proc/self/status`), where there is one.
pub fn resident_set() -> Option<u64> {
    status_bytes("self", "VmRSS")
}

/// A size field of `/proc/<process>/status` in bytes (`VmRSS`, `RssFile`, ...), for
/// `process` a pid or `self`.
pub fn status_bytes(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_grows_with_memory_touched() {
        let before = resident_set().expect("Linux has /proc/self/status");
        let touched = vec![1u8; 64 << 20];
        let after = resident_set().unwrap();
        assert!(
            after >= before + (48 << 20),
            "{before} then {after} bytes with 64 MiB touched"
        );
        drop(touched);
    }
}

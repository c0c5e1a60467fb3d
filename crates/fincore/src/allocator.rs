//! How this process's memory allocator (glibc's malloc) treats the megabyte-sized buffers a
//! batch passes through: kept for reuse instead of handed back to the kernel after each batch.
//!
//! glibc serves such buffers from `mmap` or from a thread's arena and, once freed, returns the
//! memory (`munmap`, or `madvise` when it trims an arena), so the next batch's buffers fault
//! in fresh, zeroed pages: profiled on a gateway, page faults and their zeroing were about 30 %
//! of its CPU. Fixing the mmap threshold at its maximum (32 MiB) and raising the trim threshold
//! keeps them in the arenas; measured (`bench --groups 1 --vs-direct`, 1M transfers, paired
//! runs): the gateway 384–463k → 444–575k transfers/s, a direct node unchanged within noise.
//! The cost: freed memory below 32 MiB stays with the process (its high-water mark), which
//! is what a server that handles batches all day would reach anyway. Buffers larger than
//! 32 MiB (the ledger's own tables) are still mapped and unmapped as before.

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
/// Free memory at the top of an arena is trimmed only beyond this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 256 << 20;

/// Sets the thresholds (before any thread starts). Harmless where it does not apply.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is called at the start of main,
    // before any other thread exists, and its failure (a 0 return) leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}

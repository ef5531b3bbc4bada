//! Backs the model's weights with 2 MiB pages.
//!
//! Decoding reads every weight once per token (~150 MiB packed for the default model), so its speed is
//! bounded by memory traffic — and, with 4 KiB pages, by address-translation (TLB) misses over
//! that much memory. Linux's transparent huge pages remove most of those misses, but most
//! systems give them only to memory that asks for them (`enabled = madvise`), and ONNX Runtime
//! does not ask. So once the sessions are open, [`in_background`] asks the kernel
//! (`madvise(MADV_COLLAPSE)`, Linux ≥ 6.1) to rebuild in place, as 2 MiB pages, every fully
//! resident 2 MiB stretch of private anonymous memory mapped since a [`Snapshot`] — that is,
//! what loading the model allocated. Contents, addresses and resident size stay the same: only
//! chunks whose every page is present and mapped by this process alone (not the shared zero
//! page, not copy-on-write) are touched, so nothing grows.
//!
//! The kernel may have to compact memory to find free huge pages (50–460 ms measured for the
//! default model), and a generation running while a chunk of its weights is being rebuilt
//! waits for it (measured: a first token 180–280 ms instead of 75 ms when the two overlapped).
//! So this runs on a thread of its own, at the lowest priority, and only while no generation
//! runs: it waits before each chunk until the backend is idle. `commit()` is not delayed and
//! requests are not slowed; memory moves in the gaps between them.
//!
//! Best effort: on other systems, on older kernels, with huge pages switched off
//! (`enabled = never`) or when the kernel declines a chunk, memory stays as it was.
//! Measured with `examples/local_bench.rs`: see the README's performance table.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Private anonymous writable mappings of this process at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    regions: Vec<Range<usize>>,
}

/// What [`collapse`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Collapsed {
    /// Bytes now backed by 2 MiB pages.
    pub(crate) bytes: usize,
    /// Fully resident chunks the kernel declined (no free huge page at the moment...).
    pub(crate) declined: usize,
    /// Why nothing was tried, when this system cannot do it.
    pub(crate) unavailable: Option<String>,
}

impl Snapshot {
    /// Reads `/proc/self/maps`; empty where that does not exist.
    pub(crate) fn take() -> Self {
        Snapshot {
            regions: std::fs::read_to_string("/proc/self/maps")
                .map(|maps| anonymous_regions(&maps))
                .unwrap_or_default(),
        }
    }

    /// The anonymous memory mapped since `self` was taken.
    pub(crate) fn mapped_since(&self) -> Vec<Range<usize>> {
        new_parts(&self.regions, &Snapshot::take().regions)
    }
}

/// How far the background collapse has got; shared with the [`super::LocalBackend`], which
/// calls [`Progress::stop`] when it is dropped (its memory is then no longer the model's).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    bytes: AtomicUsize,
    settled: AtomicBool,
    stopped: AtomicBool,
}

impl Progress {
    /// Bytes moved to huge pages so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the collapse has finished (or was never started).
    pub(crate) fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Asks a running collapse to stop before its next chunk.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// A collapse that will not run.
    pub(crate) fn off() -> Arc<Self> {
        let p = Progress::default();
        p.settled.store(true, Ordering::Release);
        Arc::new(p)
    }
}

/// How long the collapse waits before looking again whether the backend is idle.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Collapses `regions` (see [`Snapshot::mapped_since`]) on a low-priority thread of its own,
/// one chunk at a time while `busy()` is false.
pub(crate) fn in_background(
    regions: Vec<Range<usize>>,
    busy: impl Fn() -> bool + Send + 'static,
) -> Arc<Progress> {
    let progress = Arc::new(Progress::default());
    let shared = Arc::clone(&progress);
    let spawned = std::thread::Builder::new()
        .name("edgeroute-huge-pages".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            system::lower_priority();
            collapse(&regions, &shared, &busy);
            shared.settled.store(true, Ordering::Release);
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "huge pages: no thread for the collapse");
        progress.settled.store(true, Ordering::Release);
    }
    progress
}

/// The private, anonymous, writable mappings (heaps, `mmap`ed allocations) listed in a
/// `/proc/<pid>/maps` text.
fn anonymous_regions(maps: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let inode = fields.nth(2)?;
            let path = fields.next().unwrap_or("");
            let anonymous = inode == "0" && (path.is_empty() || path == "[heap]");
            if !anonymous || !perms.starts_with("rw") || !perms.ends_with('p') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start < end).then_some(start..end)
        })
        .collect()
}

/// The parts of `now` not covered by any of `before`.
fn new_parts(before: &[Range<usize>], now: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for region in now {
        let mut pieces = vec![region.clone()];
        for old in before {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let left = p.start..p.end.min(old.start);
                    let right = p.start.max(old.end)..p.end;
                    [left, right].into_iter().filter(|r| r.start < r.end)
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

/// Starts of the `chunk`-aligned chunks lying wholly inside `range`.
fn aligned_chunks(range: &Range<usize>, chunk: usize) -> impl Iterator<Item = usize> {
    let first = range.start.div_ceil(chunk) * chunk;
    let end = range.end / chunk * chunk;
    (first..end).step_by(chunk)
}

/// Collapses into huge pages the fully resident chunks of `regions`, adding each chunk done to
/// `progress` as it goes, waiting before each chunk while `busy()` and stopping early when
/// asked to. Never fails: what cannot be done is logged at debug level and skipped.
pub(crate) fn collapse(
    regions: &[Range<usize>],
    progress: &Progress,
    busy: &dyn Fn() -> bool,
) -> Collapsed {
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (regions, progress, busy);
        return Collapsed {
            unavailable: Some("transparent huge pages are a Linux feature".into()),
            ..Collapsed::default()
        };
    }
    #[cfg(target_os = "linux")]
    match system::Support::probe() {
        Ok(support) => {
            let mut done = Collapsed::default();
            let chunks = regions
                .iter()
                .flat_map(|r| aligned_chunks(r, support.huge_page));
            for chunk in chunks {
                while busy() && !progress.stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(IDLE_POLL);
                }
                if progress.stopped.load(Ordering::Relaxed) {
                    break;
                }
                if !support.fully_resident(chunk) {
                    continue;
                }
                // EINVAL here is the kernel's "this range cannot be collapsed" (its support was
                // probed once, up front): skip the chunk like any other refusal.
                match system::collapse(chunk, support.huge_page) {
                    Ok(()) => {
                        done.bytes += support.huge_page;
                        progress
                            .bytes
                            .fetch_add(support.huge_page, Ordering::Relaxed);
                    }
                    Err(_) => done.declined += 1,
                }
            }
            tracing::debug!(
                mib = done.bytes >> 20,
                declined = done.declined,
                "huge pages: model memory collapsed"
            );
            done
        }
        Err(why) => {
            tracing::debug!(%why, "huge pages: not used");
            Collapsed {
                unavailable: Some(why),
                ..Collapsed::default()
            }
        }
    }
}

/// The few system calls this needs.
#[cfg(target_os = "linux")]
mod system {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    /// `MADV_COLLAPSE` from Linux's uapi `mman-common.h` (the `libc` crate does not name it).
    const MADV_COLLAPSE: libc::c_int = 25;
    /// `/proc/self/pagemap` bits: the page is present; it is mapped by this process only (so not
    /// the shared zero page of a never-written page, nor shared copy-on-write).
    const PAGE_PRESENT: u64 = 1 << 63;
    const PAGE_EXCLUSIVE: u64 = 1 << 56;

    /// What this system offers.
    pub(super) struct Support {
        /// Size of a huge page (2 MiB on x86-64 and on arm64 with 4 KiB pages).
        pub(super) huge_page: usize,
        page: usize,
        pagemap: File,
    }

    impl Support {
        pub(super) fn probe() -> Result<Self, String> {
            const THP: &str = "/sys/kernel/mm/transparent_hugepage";
            let enabled = std::fs::read_to_string(format!("{THP}/enabled"))
                .map_err(|e| format!("{THP}/enabled: {e}"))?;
            if enabled.contains("[never]") {
                return Err("transparent huge pages are switched off (enabled = never)".into());
            }
            let huge_page = std::fs::read_to_string(format!("{THP}/hpage_pmd_size"))
                .map_err(|e| format!("{THP}/hpage_pmd_size: {e}"))?
                .trim()
                .parse::<usize>()
                .map_err(|e| format!("{THP}/hpage_pmd_size: {e}"))?;
            let page = page_size();
            if page == 0 || huge_page == 0 || huge_page % page != 0 {
                return Err(format!("page size {page}, huge page size {huge_page}"));
            }
            let pagemap =
                File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
            // A zero-length request is accepted (a no-op) by kernels that know the advice and
            // refused with EINVAL by those that do not (before Linux 6.1).
            collapse(0, 0)
                .map_err(|e| format!("this kernel has no MADV_COLLAPSE (Linux >= 6.1): {e}"))?;
            Ok(Support {
                huge_page,
                page,
                pagemap,
            })
        }

        /// Whether every page of the huge-page-sized chunk at `addr` is in memory and this
        /// process's own (so collapsing it adds nothing to the resident size).
        pub(super) fn fully_resident(&self, addr: usize) -> bool {
            let pages = self.huge_page / self.page;
            let mut entries = vec![0u8; pages * 8];
            let offset = (addr / self.page * 8) as u64;
            if self.pagemap.read_exact_at(&mut entries, offset).is_err() {
                return false;
            }
            entries.chunks_exact(8).all(|e| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(e);
                let entry = u64::from_ne_bytes(bytes);
                entry & PAGE_PRESENT != 0 && entry & PAGE_EXCLUSIVE != 0
            })
        }
    }

    #[allow(unsafe_code)]
    fn page_size() -> usize {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).unwrap_or(0)
    }

    /// Lowest scheduling priority for the calling thread (Linux threads have their own nice
    /// value), so the collapse yields to generations.
    #[allow(unsafe_code)]
    pub(super) fn lower_priority() {
        // SAFETY: setpriority only changes the calling thread's (who = 0) nice value.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "huge pages: priority unchanged");
        }
    }

    /// Asks the kernel to back `[addr, addr + len)` with huge pages, keeping its contents.
    #[allow(unsafe_code)]
    pub(super) fn collapse(addr: usize, len: usize) -> io::Result<()> {
        // SAFETY: MADV_COLLAPSE changes only how memory is backed, never the contents or the
        // addresses of any mapping. The range was listed as this process's anonymous memory but
        // may have been unmapped (ENOMEM) or even reused by another mapping since; either way
        // no memory the program can observe changes.
        let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_COLLAPSE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
7f0000400000-7f0000600000 r--p 00000000 08:01 1234                       /usr/lib/libfoo.so
7f0000600000-7f0000800000 rw-p 00010000 08:01 1234                       /usr/lib/libfoo.so
7f0000800000-7f0000a00000 ---p 00000000 00:00 0 
7f0000a00000-7f0000c00000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_private_anonymous_writable_mappings_count() {
        assert_eq!(
            anonymous_regions(MAPS),
            vec![
                0x55d0_c0a0_0000..0x55d0_c0a2_1000,
                0x7f00_0000_0000..0x7f00_0040_0000
            ]
        );
        assert!(anonymous_regions("garbage\n\n1-2\nzz-yy rw-p 0 00:00 0\n").is_empty());
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one-region lists are the point here
    fn new_parts_subtracts_what_was_mapped_before() {
        let before = [10..20, 30..40];
        let now = [0..25, 30..40, 35..50, 60..70];
        assert_eq!(
            new_parts(&before, &now),
            vec![0..10, 20..25, 40..50, 60..70]
        );
        assert_eq!(new_parts(&[], &[5..9]), vec![5..9]);
        assert!(new_parts(&[0..100], &[10..20]).is_empty());
    }

    #[test]
    fn only_whole_aligned_chunks_are_used() {
        let chunks: Vec<usize> = aligned_chunks(&(5..47), 10).collect();
        assert_eq!(chunks, vec![10, 20, 30]);
        assert_eq!(aligned_chunks(&(0..20), 10).count(), 2);
        assert_eq!(aligned_chunks(&(11..19), 10).count(), 0);
    }

    /// AnonHugePages (kB) of the mapping containing `addr`, from `/proc/self/smaps`.
    fn anon_huge_kib_at(addr: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    return v.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn a_buffer_mapped_after_the_snapshot_is_found_and_collapsed_when_the_kernel_can() {
        let before = Snapshot::take();
        // 40 MiB written through, so every page is present and this process's own; above
        // glibc's largest mmap threshold (32 MiB), so it is a mapping of its own.
        let buffer: Vec<u8> = (0..40 << 20).map(|i| (i % 251) as u8).collect();
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(
            before
                .mapped_since()
                .iter()
                .any(|r| r.start <= range.start && range.end <= r.end),
            "the new buffer is not among the regions mapped since the snapshot"
        );
        // Only the buffer's own range: other tests of this process are not touched.
        let progress = Progress::default();
        let done = collapse(std::slice::from_ref(&range), &progress, &|| false);
        assert_eq!(progress.bytes(), done.bytes);
        assert!(buffer
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));
        if let Some(why) = &done.unavailable {
            eprintln!("huge pages unavailable here ({why}); only contents checked");
            assert_eq!(done.bytes, 0);
            return;
        }
        // Every whole 2 MiB chunk inside the buffer was collapsed or declined (the kernel may
        // lack a free huge page at that moment), and what was collapsed shows.
        let chunks = aligned_chunks(&range, 2 << 20).count();
        assert!(chunks >= 19);
        assert_eq!(done.bytes + (done.declined << 21), chunks << 21, "{done:?}");
        if done.bytes == 0 {
            eprintln!("the kernel declined every chunk (no free huge page?): {done:?}");
            return;
        }
        let huge = anon_huge_kib_at(range.start).unwrap();
        assert!(
            huge * 1024 >= done.bytes,
            "AnonHugePages {huge} kB, {done:?}"
        );
    }

    #[test]
    fn a_stopped_collapse_does_nothing_more() {
        let buffer: Vec<u8> = vec![1; 8 << 20];
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let progress = Progress::default();
        progress.stop();
        let done = collapse(std::slice::from_ref(&range), &progress, &|| false);
        assert_eq!((done.bytes, done.declined), (0, 0), "{done:?}");
    }

    #[test]
    fn never_written_pages_are_not_collapsed() {
        // Mapped but never touched (or only read): no page of this process's own, so a
        // collapse would add resident memory; it must be skipped, not counted as moved.
        // 40 MiB: a fresh mapping of its own, which calloc does not need to write.
        let buffer: Vec<u8> = vec![0; 40 << 20];
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let sum: u64 = buffer.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, 0);
        let done = collapse(std::slice::from_ref(&range), &Progress::default(), &|| {
            false
        });
        assert_eq!((done.bytes, done.declined), (0, 0), "{done:?}");
    }

    #[test]
    fn the_collapse_waits_while_the_backend_is_busy() {
        let buffer: Vec<u8> = (0..40 << 20).map(|i| (i % 7) as u8).collect();
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let busy_until = std::time::Instant::now() + Duration::from_millis(150);
        let progress = Progress::default();
        // What had been collapsed each time the backend was found busy.
        let while_busy = std::sync::Mutex::new(Vec::new());
        let done = collapse(std::slice::from_ref(&range), &progress, &|| {
            let busy = std::time::Instant::now() < busy_until;
            if busy {
                while_busy.lock().unwrap().push(progress.bytes());
            }
            busy
        });
        if let Some(why) = &done.unavailable {
            eprintln!("huge pages unavailable here ({why}); only the stop request checked");
        } else {
            // The collapse asked again and again while the backend was busy, and nothing was
            // collapsed meanwhile; then the work proceeded.
            let while_busy = while_busy.into_inner().unwrap();
            assert!(while_busy.len() >= 2, "{while_busy:?}");
            assert!(while_busy.iter().all(|&b| b == 0), "{while_busy:?}");
            assert!(done.bytes + done.declined > 0, "{done:?}");
        }
        // Busy for good: a stop request ends the wait without doing anything.
        let progress = Progress::default();
        progress.stop();
        let done = collapse(std::slice::from_ref(&range), &progress, &|| true);
        assert_eq!((done.bytes, done.declined), (0, 0), "{done:?}");
    }
}

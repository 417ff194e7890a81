//! The worker pool that runs the parallel operations of a forward pass.
//!
//! A decode step is hundreds of small parallel operations (seven matrix products and an
//! attention per layer), each a few microseconds to a few hundred. Waking sleeping
//! threads for each, as general-purpose fork-join pools do, costs as much as the work
//! on small models. Here the workers are started once and, between operations, spin on
//! an epoch counter for a while before going to sleep: an operation is published by
//! bumping the epoch, its tasks are handed out by an atomic counter (the calling
//! thread works too), and everybody meets at a spinning barrier before the call
//! returns.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations a worker waits for the next operation before sleeping (a few
/// hundred microseconds: longer than any gap inside a forward pass, short enough
/// not to burn a core while the caller samples or waits for input).
const SPIN_LIMIT: u32 = 1 << 16;

/// The default thread count: the physical cores this process may run on (SMT siblings
/// share one core's vector units, so a second thread per core only adds contention),
/// from Linux's CPU topology; elsewhere, or if that cannot be read, the available
/// parallelism.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    physical_cores().map_or(logical, |p| p.clamp(1, logical))
}

fn physical_cores() -> Option<usize> {
    let mut cores = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
        let path = entry.ok()?.path();
        let name = path.file_name()?.to_str()?.to_owned();
        if name
            .strip_prefix("cpu")
            .is_none_or(|n| n.parse::<u32>().is_err())
        {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(path.join("topology").join(f)).ok();
        if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((pkg.trim().to_owned(), core.trim().to_owned()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// One published operation: `f(i)` for every task `i < n_tasks`.
struct Job<'a> {
    n_tasks: usize,
    f: &'a (dyn Fn(usize) + Sync),
}

/// A value alone on its cache lines, so that spinning on one counter does not slow
/// writes to another.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    /// Bumped once per operation; workers wait for it to change.
    epoch: Padded<AtomicU64>,
    /// The current operation (valid while its epoch's workers are pending).
    job: AtomicPtr<Job<'static>>,
    /// Next task index to hand out.
    next: Padded<AtomicUsize>,
    /// Workers that have not yet finished the current operation.
    pending: Padded<AtomicUsize>,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// The first panic of a worker in the current operation, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A fixed set of worker threads for parallel kernels (see the module header).
pub struct WorkerPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one operation at a time.
    caller: Mutex<()>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl WorkerPool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<WorkerPool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: Padded(AtomicU64::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: Padded(AtomicUsize::new(0)),
            pending: Padded(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panic: Mutex::new(None),
        });
        let mut pool = WorkerPool {
            threads,
            shared: shared.clone(),
            workers: Vec::with_capacity(threads - 1),
            caller: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("llama2-worker-{i}"))
                .spawn(move || worker(&shared))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads that run an operation (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i < n_tasks` on all threads and returns when all are done.
    /// Tasks are handed out one at a time in increasing order; a panic in any task is
    /// re-raised here after the others finish.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _one_at_a_time = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job = Job { n_tasks, f };
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only
        // between seeing the new epoch and decrementing `pending`, and this function
        // does not return (so `job` and `f` stay alive) until `pending` is zero.
        let ptr = unsafe {
            std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job as *const Job<'_>)
        };
        s.job.store(ptr, Ordering::Release);
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(self.workers.len(), Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| take_tasks(s, &job)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        let theirs = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if let Some(p) = theirs {
            panic::resume_unwind(p);
        }
    }

    /// Runs `f(i, piece)` for every `chunk`-sized piece `i` of `data` (the last may be
    /// shorter), in parallel as [`run`](Self::run) does.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let base = super::SharedOut(data.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // SAFETY: piece `i` is `data[start..start + n]`, inside `data`, which is
            // borrowed mutably for the whole call; each index `i` is handed out once,
            // so the pieces given out are disjoint.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), n) };
            f(i, piece);
        });
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn take_tasks(s: &Shared, job: &Job<'_>) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n_tasks {
            return;
        }
        (job.f)(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
            }
        }
        let ptr = s.job.load(Ordering::Acquire);
        // SAFETY: the caller published `ptr` before bumping the epoch we just saw and
        // keeps the job alive until this worker decrements `pending` below.
        let job = unsafe { &*ptr };
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| take_tasks(s, job))) {
            let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_operations() {
        for threads in [1, 2, 3, 8] {
            let pool = WorkerPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} {n}"
                );
            }
        }
    }

    #[test]
    fn default_threads_is_at_least_one_and_at_most_the_logical_cpus() {
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().unwrap().get());
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = WorkerPool::new(3).unwrap();
        let seen = Mutex::new(std::collections::HashSet::new());
        std::thread::sleep(std::time::Duration::from_millis(200));
        pool.run(64, &|_| {
            seen.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_millis(2));
        });
        assert!(seen.lock().unwrap().len() > 1, "only the caller worked");
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        let pool = WorkerPool::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(50, &|i| {
                if i == 31 {
                    panic!("task 31");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}

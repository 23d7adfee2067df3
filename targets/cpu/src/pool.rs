//! The worker threads a program's kernels are split across: started once with the program,
//! kept for its lifetime. A kernel step hands each worker one chunk of its parallel range and
//! runs chunk 0 on the calling thread. Between steps a worker spins for a short while before
//! it sleeps, so the many short steps of one inference do not each pay a thread wake-up (a
//! general-purpose pool parks its threads at once; on this machine a wake-up costs tens of
//! microseconds, about 60 times per MiniLM inference).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations (with a pause hint each) before a worker sleeps: about 0.1-0.3 ms.
const SPINS: u32 = 1 << 15;

/// A job: `f(chunk)` for every chunk in `1..chunks` on the workers.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; a worker runs the job when it sees a new value.
    epoch: AtomicU64,
    /// The current job, written by the caller before it bumps `epoch` and not again until
    /// every worker's chunk has finished.
    job: UnsafeCell<Option<Job>>,
    chunks: AtomicUsize,
    /// Worker chunks of the current job not yet finished.
    remaining: AtomicUsize,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `Pool::run` while no worker reads it (all chunks of the
// previous job have finished and the new epoch is not yet published), and read by workers only
// after they observe the new epoch (SeqCst), until they decrement `remaining`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: `run` holds it for the whole job.
    running: Mutex<()>,
}

impl Pool {
    /// `threads - 1` workers (the caller is the remaining thread).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            chunks: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            workers.push(std::thread::Builder::new().name(format!("tessera-cpu-{i}")).spawn(move || work(&s, i))?);
        }
        Ok(Pool { shared, workers, running: Mutex::new(()) })
    }

    /// Threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(c)` for `c` in `0..chunks` (at most [`Pool::threads`]), chunk 0 on the calling
    /// thread, and returns when all have finished.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let chunks = chunks.clamp(1, self.threads());
        if chunks == 1 {
            f(0);
            return;
        }
        let _one_job = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: no worker reads `job` now (the previous job's chunks all finished before the
        // last `run` returned); the pointer outlives the job because `run` waits for it.
        unsafe {
            let erased: Job = std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f);
            *s.job.get() = Some(erased);
        }
        s.chunks.store(chunks, SeqCst);
        s.remaining.store(self.workers.len(), SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        f(0);
        while s.remaining.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin, then sleep, until a new job (or stop).
        let mut spins = 0;
        while s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst) {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
        }
        if s.stop.load(SeqCst) {
            return;
        }
        seen = s.epoch.load(SeqCst);
        if index < s.chunks.load(SeqCst) {
            // SAFETY: see `Shared`: the job stays valid until `remaining` reaches 0.
            if let Some(job) = unsafe { *s.job.get() } {
                let f = unsafe { &*job };
                // A panic must not leave the caller waiting forever.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
            }
        }
        s.remaining.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    /// Many short jobs with every chunk count: each chunk runs exactly once per job.
    #[test]
    fn every_chunk_runs_once_per_job() {
        let pool = Pool::new(3).unwrap();
        let total = AtomicI64::new(0);
        for round in 0..2000usize {
            let chunks = 1 + round % 3;
            let hits: Vec<AtomicI64> = (0..3).map(|_| AtomicI64::new(0)).collect();
            pool.run(chunks, &|c| {
                hits[c].fetch_add(1, SeqCst);
                total.fetch_add(1, SeqCst);
            });
            for (c, h) in hits.iter().enumerate() {
                assert_eq!(h.load(SeqCst), i64::from(c < chunks), "round {round} chunk {c}");
            }
            if round % 500 == 0 {
                // Let the workers fall asleep once in a while.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(total.load(SeqCst), (0..2000).map(|r| 1 + r % 3).sum::<usize>() as i64);
    }

    /// Two callers sharing one pool (a `Session` used from two threads) take turns.
    #[test]
    fn concurrent_callers_take_turns() {
        let pool = Pool::new(2).unwrap();
        let sum = AtomicI64::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        pool.run(2, &|c| {
                            sum.fetch_add(c as i64 + 1, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(sum.load(SeqCst), 2 * 1000 * 3);
    }
}

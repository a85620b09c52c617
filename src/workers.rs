//! Connection workers: one thread each, each running its own single-threaded runtime, as
//! nginx runs one worker process per core.
//!
//! The accept loop hands every admitted connection to one worker, in turn, and the
//! connection stays there until it closes: its reads, the pipeline, the upstream exchange
//! and the answer all run on that thread. A request then costs no work-stealing hand-off
//! and no cross-thread wake-up; the work-stealing runtime measured about one futex call
//! per request for those (BENCHMARKS.md, "Connection workers").
//!
//! A socket is registered with the reactor of the runtime that opened it, so whatever a
//! connection keeps between requests is kept per worker too: the upstream pool has one
//! slot per worker, found by [`current`].

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// 1..=n on worker n's thread; 0 anywhere else.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Which worker the calling thread is: `1..=n` on a worker, `0` on any other thread (the
/// main runtime, tests, tools).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many per-worker copies a shared count keeps ([`slot`]): one for each of the first
/// fifteen workers and one for every other thread; workers past those share, which stays
/// correct and only costs them the shared line.
pub const SLOTS: usize = 16;

/// The calling thread's copy of a per-worker count, `0..SLOTS`: its worker index, folded
/// into [`SLOTS`]; `0` on a thread that is no worker.
pub fn slot() -> usize {
    current() % SLOTS
}

/// How many workers `configured` asks for: the number written, or one per core.
pub fn count(configured: Option<NonZeroUsize>) -> usize {
    configured
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
}

/// The running workers. Dropping this stops them: each runtime is shut down, and the
/// connections still on it are closed.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped to stop the workers.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads (at least one), each with its runtime ready before this
    /// returns.
    pub fn start(n: usize) -> io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for index in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // The lines logged since the last park go to the log together.
                .on_thread_park(crate::logbatch::hand_on)
                .build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("bsk-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    crate::logbatch::gather_on_this_thread();
                    // Resolves when `Workers` is dropped (the sender goes with it).
                    let _ = runtime.block_on(rx);
                    // Blocking tasks (a file write) finish; connections still open close.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                    crate::logbatch::hand_on();
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker in turn. `task` is called on that worker's thread, so
    /// the sockets it registers (`TcpStream::from_std`) belong to that worker's reactor.
    pub fn spawn<T, F>(&self, task: T)
    where
        T: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.handles.get(turn % self.handles.len().max(1)) {
            h.spawn(async move { task().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::mpsc;

    #[test]
    fn connections_go_to_each_worker_in_turn_and_run_on_its_thread() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        assert_eq!(current(), 0, "the test's own thread is no worker");
        let (tx, rx) = mpsc::channel();
        for _ in 0..6 {
            let tx = tx.clone();
            workers.spawn(move || async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((current(), name)).unwrap();
            });
        }
        let seen: Vec<(usize, Option<String>)> = (0..6).map(|_| rx.recv().unwrap()).collect();
        let indices: BTreeSet<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, BTreeSet::from([1, 2, 3]));
        for (i, name) in &seen {
            assert_eq!(name.as_deref(), Some(format!("bsk-worker-{i}").as_str()));
        }
        assert_eq!(seen.iter().filter(|(i, _)| *i == 2).count(), 2);
    }

    #[test]
    fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        workers.spawn(move || async move {
            // Holds `tx` until the runtime drops the task.
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(
            rx.recv().is_err(),
            "the task was dropped with its runtime, so its sender is gone"
        );
    }

    /// A log writer that passes each write it is given on a channel.
    #[derive(Clone)]
    struct Sent(std::sync::Arc<std::sync::Mutex<mpsc::Sender<String>>>);

    impl io::Write for Sent {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let text = String::from_utf8_lossy(buf).into_owned();
            self.0.lock().unwrap().send(text).unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_workers_lines_go_to_the_log_together_when_it_has_nothing_left_to_run() {
        use std::io::Write as _;
        use tracing_subscriber::fmt::MakeWriter as _;
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(crate::logbatch::Batched::new(Sent(std::sync::Arc::new(
            std::sync::Mutex::new(tx),
        ))));
        let workers = Workers::start(1).unwrap();
        let (seen, before_the_park) = mpsc::channel();
        workers.spawn({
            let log = log.clone();
            move || async move {
                log.make_writer().write_all(b"one\n").unwrap();
                log.make_writer().write_all(b"two\n").unwrap();
                // Still on the worker, which has not parked since.
                seen.send(()).unwrap();
            }
        });
        before_the_park.recv().unwrap();
        let handed = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(handed.as_deref(), Ok("one\ntwo\n"), "in one write");
        assert!(rx.try_recv().is_err(), "and only once");

        // A thread that is no worker writes each line through at once.
        log.make_writer().write_all(b"main\n").unwrap();
        assert_eq!(rx.try_recv().as_deref(), Ok("main\n"));
    }

    #[test]
    fn count_is_what_is_written_or_one_per_core() {
        assert_eq!(count(NonZeroUsize::new(3)), 3);
        assert!(count(None) >= 1);
    }
}

//! Log lines off the request path, written out in batches.
//!
//! Each thread appends its formatted lines to a buffer of its own; one writer thread
//! takes the buffers and writes each out with one `write`. The writer is woken once per
//! batch, not once per line: when a buffer goes from empty to holding a line, it is
//! told, waits [`LINGER`] for more lines to join, and writes everything there is. So a
//! quiet sidecar's line appears within `LINGER`, and a busy one costs its connection
//! workers a copy per line and the writer a wake-up per `LINGER` — where a queue of
//! lines wakes the writer, and preempts a worker on a busy machine, at every line.
//!
//! Never lossy: a thread whose buffer reaches [`BACKLOG`] (the writer is behind, or the
//! output is blocked) writes its buffer out itself, so requests wait rather than lines
//! vanish. Lines of one thread keep their order; lines of different threads interleave
//! whole, in batches, each carrying its own timestamp.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits, once woken, for more lines to join the batch.
pub const LINGER: Duration = Duration::from_millis(20);

/// A thread's buffered lines past this size are written by the thread itself.
pub const BACKLOG: usize = 256 * 1024;

type Buffer = Arc<Mutex<Vec<u8>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    /// Every thread's buffer; a thread's entry stays until its buffer is written out
    /// after the thread has ended.
    buffers: Mutex<Vec<Buffer>>,
    /// A buffer went from empty to holding a line since the writer last looked.
    pending: Mutex<bool>,
    wake: Condvar,
    stopped: AtomicBool,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn signal(&self) {
        let mut pending = lock(&self.pending);
        if !*pending {
            *pending = true;
            self.wake.notify_one();
        }
    }

    /// Writes out every thread's lines, one buffer at a time (a thread appending to its
    /// buffer waits only for the swap, never for the write).
    fn drain(&self, spare: &mut Vec<u8>) {
        let buffers: Vec<Buffer> = {
            let mut all = lock(&self.buffers);
            // A thread that has ended, and whose lines are out, is forgotten.
            all.retain(|b| Arc::strong_count(b) > 1 || !lock(b).is_empty());
            all.clone()
        };
        for b in buffers {
            std::mem::swap(&mut *lock(&b), spare);
            if !spare.is_empty() {
                self.emit(spare);
            }
            spare.clear();
        }
        let _ = lock(&self.out).flush();
    }

    fn emit(&self, bytes: &[u8]) {
        let mut out = lock(&self.out);
        if let Err(e) = out.write_all(bytes) {
            // Nowhere left to log it; say so once per failing batch on stderr.
            let _ = writeln!(io::stderr(), "log output failed: {e}");
        }
    }

    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut pending = lock(&self.pending);
                while !*pending && !self.stopped.load(Ordering::Acquire) {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            if !self.stopped.load(Ordering::Acquire) {
                std::thread::sleep(LINGER);
            }
            *lock(&self.pending) = false;
            self.drain(&mut spare);
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

thread_local! {
    /// This thread's buffer for each live writer (in practice, one).
    static LOCAL: RefCell<Vec<(Weak<Shared>, Buffer)>> = const { RefCell::new(Vec::new()) };
}

/// The `MakeWriter` for `tracing_subscriber::fmt`: every event's formatted line goes
/// through [`Lines::write`] once.
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
}

/// Held by `main`: dropping it writes out every line still buffered and stops the
/// writer; later lines are written at once.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread, `name`d, writing to `out`. Should the thread not start,
/// every line is written at once by the thread that logs it.
pub fn start(name: &str, out: Box<dyn Write + Send>) -> (Lines, Guard) {
    let shared = Arc::new(Shared {
        buffers: Mutex::new(Vec::new()),
        pending: Mutex::new(false),
        wake: Condvar::new(),
        stopped: AtomicBool::new(false),
        out: Mutex::new(out),
    });
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || writer.run());
    if let Err(e) = &thread {
        shared.stopped.store(true, Ordering::Release);
        shared.emit(
            format!("cannot start the log writer ({e}); lines are written as they come\n")
                .as_bytes(),
        );
    }
    (
        Lines {
            shared: Arc::clone(&shared),
        },
        Guard {
            shared,
            thread: thread.ok(),
        },
    )
}

impl Lines {
    /// Appends one formatted line to this thread's buffer (made and listed on its first
    /// line), waking the writer if the buffer was empty.
    pub fn write_line(&self, line: &[u8]) {
        if self.shared.stopped.load(Ordering::Acquire) {
            self.shared.emit(line);
            return;
        }
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            // A `Weak` keeps its allocation, so no later writer can share this address.
            let me = Arc::as_ptr(&self.shared);
            let at = match local.iter().position(|(w, _)| Weak::as_ptr(w) == me) {
                Some(at) => at,
                None => {
                    local.retain(|(w, _)| w.strong_count() > 0);
                    let b: Buffer = Arc::new(Mutex::new(Vec::new()));
                    lock(&self.shared.buffers).push(Arc::clone(&b));
                    local.push((Arc::downgrade(&self.shared), b));
                    local.len() - 1
                }
            };
            let Some((_, buffer)) = local.get(at) else {
                self.shared.emit(line);
                return;
            };
            let mut buf = lock(buffer);
            let first = buf.is_empty();
            buf.extend_from_slice(line);
            if buf.len() >= BACKLOG {
                // The writer is behind: this thread waits for its own lines to be written.
                self.shared.emit(&buf);
                buf.clear();
            } else if first {
                drop(buf);
                self.shared.signal();
            }
        });
    }
}

/// One event's writer: a borrow of [`Lines`], so logging a line touches no shared count.
pub struct LineWriter<'a>(&'a Lines);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.write_line(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(self)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        {
            let _pending = lock(&self.shared.pending);
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Lines a thread buffered while the writer finished.
        self.shared.drain(&mut Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test reads back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    fn line(w: &mut Lines, thread: usize, i: usize) {
        w.write_line(format!("thread {thread} line {i} {}\n", "x".repeat(i % 200)).as_bytes());
    }

    /// Every line of every thread arrives whole, each thread's in its order, and nothing
    /// is lost — including lines past the backlog, written by their own thread.
    #[test]
    fn every_line_arrives_whole_and_in_its_threads_order() {
        let sink = Sink::default();
        let (lines, guard) = start("test-log", Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = lines.clone();
                std::thread::spawn(move || (0..5_000).for_each(|i| line(&mut w, t, i)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = sink.text();
        for t in 0..4 {
            let got: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|rest| {
                    let (i, pad) = rest.split_once(' ').unwrap();
                    let i: usize = i.parse().unwrap();
                    assert_eq!(pad, "x".repeat(i % 200), "line {i} of thread {t} whole");
                    i
                })
                .collect();
            assert_eq!(got, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 20_000);
    }

    /// A single line from a quiet process is written without waiting for more, and
    /// lines after the guard is dropped are written at once.
    #[test]
    fn a_quiet_line_appears_and_late_lines_are_not_lost() {
        let sink = Sink::default();
        let (mut lines, guard) = start("test-log", Box::new(sink.clone()));
        line(&mut lines, 0, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() {
            assert!(Instant::now() < deadline, "the line never appeared");
            std::thread::yield_now();
        }
        assert_eq!(sink.text(), "thread 0 line 1 x\n");
        drop(guard);
        line(&mut lines, 0, 2);
        assert_eq!(sink.text(), "thread 0 line 1 x\nthread 0 line 2 xx\n");
    }

    /// A thread that ends with lines still buffered does not lose them, and its buffer
    /// is forgotten once they are out.
    #[test]
    fn an_ended_threads_lines_are_written_and_its_buffer_forgotten() {
        let sink = Sink::default();
        let (lines, guard) = start("test-log", Box::new(sink.clone()));
        let mut w = lines.clone();
        std::thread::spawn(move || line(&mut w, 7, 3))
            .join()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() || !lock(&guard.shared.buffers).is_empty() {
            assert!(Instant::now() < deadline, "not written, or not forgotten");
            guard.shared.signal();
            std::thread::yield_now();
        }
        assert_eq!(sink.text(), "thread 7 line 3 xxx\n");
    }
}

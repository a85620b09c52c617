//! The log's writer: lines are appended to a buffer in memory, and one thread of its own
//! writes the buffer out, at most once per [`Pace::every`] unless
//! [`Pace::write_at`] bytes are waiting.
//!
//! A quiet sidecar's line is written at once: the first bytes after a pause wake the
//! thread, which writes them if its last write is a whole period ago. A busy sidecar's
//! lines go out together, at most one write per period, or one per `write_at` bytes when
//! they come faster; not one per handful of requests. The threads that serve requests
//! wake the writer only when the buffer was empty or has just grown past `write_at`. Lines are never dropped: past [`Pace::full_at`] bytes, a
//! thread that logs waits until the writer has taken the buffer. Dropping the [`Guard`]
//! writes out what is left and ends the thread.

use std::io::{self, Write};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// When the writer writes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// At most one write per this period, unless `write_at` bytes are waiting.
    pub every: Duration,
    /// Written without waiting for the period once this many bytes wait.
    pub write_at: usize,
    /// A thread that logs waits while this many bytes wait (the sink is slower than the
    /// lines): a line is delayed, never lost.
    pub full_at: usize,
}

impl Default for Pace {
    /// A line waits at most 100 ms, and at most 64 KiB are written at once; 1 MiB may
    /// wait for a slow sink.
    fn default() -> Pace {
        Pace {
            every: Duration::from_millis(100),
            write_at: 64 * 1024,
            full_at: 1024 * 1024,
        }
    }
}

struct State {
    pending: Vec<u8>,
    /// The guard was dropped: what is pending is written, then the thread ends; lines
    /// after that are written to the sink by the thread that logs them.
    closed: bool,
    /// Threads waiting for room.
    waiting: usize,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits on it: for bytes, or for the end of its period.
    wake: Condvar,
    /// Threads that log wait on it for room.
    room: Condvar,
    /// Held by the writer's thread while it writes; after the close, by whoever logs.
    sink: Mutex<Box<dyn Write + Send>>,
    pace: Pace,
}

/// A lock whose holder panicked still guards whole data here (appends, swaps and writes
/// do not stop half-way through the state), so it is used as it is.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle that appends to the writer's buffer ([`Write`]); cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

/// Ends the writer's thread when dropped, after it has written everything pending (or
/// after a second, if the sink is stuck).
pub struct Guard {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

/// Starts the writer's thread (named `name`) over `sink`. Should the thread not start,
/// each line is written to the sink by the thread that logs it.
pub fn spawn<W>(sink: W, pace: Pace, name: &str) -> (LogWriter, Guard)
where
    W: Write + Send + 'static,
{
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pending: Vec::new(),
            closed: false,
            waiting: 0,
        }),
        wake: Condvar::new(),
        room: Condvar::new(),
        sink: Mutex::new(Box::new(sink)),
        pace,
    });
    let (finished, done) = mpsc::channel();
    let started = std::thread::Builder::new().name(name.to_string()).spawn({
        let shared = shared.clone();
        move || {
            write_out(&shared);
            let _ = finished.send(());
        }
    });
    if started.is_err() {
        locked(&shared.state).closed = true;
    }
    (
        LogWriter {
            shared: shared.clone(),
        },
        Guard { shared, done },
    )
}

/// Writes `bytes` to the sink. A sink that fails (stderr closed) cannot be told; the
/// lines are dropped rather than retried for ever.
fn emit(sink: &mut dyn Write, bytes: &[u8]) {
    let _ = sink.write_all(bytes).and_then(|()| sink.flush());
}

/// The writer's loop: waits for bytes, then for the rest of its period (or `write_at`
/// bytes, a thread waiting for room, or the close), takes the whole buffer and writes it.
fn write_out(shared: &Shared) {
    let pace = shared.pace;
    let mut out = Vec::new();
    // No write yet: the first bytes are written at once.
    let mut last: Option<Instant> = None;
    loop {
        let mut st = locked(&shared.state);
        while st.pending.is_empty() && !st.closed {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(due) = last.and_then(|t| t.checked_add(pace.every)) {
            while st.pending.len() < pace.write_at && st.waiting == 0 && !st.closed {
                let Some(left) = due.checked_duration_since(Instant::now()) else {
                    break;
                };
                st = (shared.wake.wait_timeout(st, left))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        if st.closed {
            // The last write, under the state's lock: a line logged after the close
            // waits for it, and so follows it.
            emit(&mut **locked(&shared.sink), &st.pending);
            st.pending = Vec::new();
            shared.room.notify_all();
            return;
        }
        std::mem::swap(&mut st.pending, &mut out);
        if st.waiting > 0 {
            shared.room.notify_all();
        }
        drop(st);
        last = Some(Instant::now());
        emit(&mut **locked(&shared.sink), &out);
        out.clear();
        // A burst does not keep its room.
        if out.capacity() > 4 * pace.write_at {
            out.shrink_to(pace.write_at);
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        let pace = shared.pace;
        let mut st = locked(&shared.state);
        while st.pending.len() >= pace.full_at && !st.closed {
            st.waiting += 1;
            // The writer does not wait out its period while a thread waits for room.
            shared.wake.notify_one();
            st = shared.room.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting -= 1;
        }
        if st.closed {
            // After the guard: the writer's thread is gone or ending, so the line goes
            // out at once, under the state's lock, after everything before it.
            emit(&mut **locked(&shared.sink), buf);
            return Ok(buf.len());
        }
        let before = st.pending.len();
        st.pending.extend_from_slice(buf);
        let after = st.pending.len();
        drop(st);
        // The writer waits without a deadline only on an empty buffer, and within its
        // period only for `write_at` bytes: wake it for nothing else.
        if before == 0 || (before < pace.write_at && after >= pace.write_at) {
            shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        locked(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        // A stuck sink (a pipe nobody reads) does not hold the process's exit for ever.
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write as one entry and reports it on a channel.
    struct Recorder(mpsc::Sender<Vec<u8>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    fn pace(every: Duration, write_at: usize, full_at: usize) -> Pace {
        Pace {
            every,
            write_at,
            full_at,
        }
    }

    #[test]
    fn a_line_after_a_pause_is_written_at_once() {
        let (tx, writes) = mpsc::channel();
        // A period longer than the test may wait: the line must not wait for it.
        let (mut w, _guard) = spawn(
            Recorder(tx),
            pace(Duration::from_secs(3600), 1 << 20, 1 << 22),
            "t",
        );
        w.write_all(b"one\n").expect("a line is appended");
        assert_eq!(
            writes.recv_timeout(PATIENCE).expect("written in time"),
            b"one\n"
        );
    }

    #[test]
    fn lines_within_a_period_go_out_in_one_write_at_its_end() {
        let (tx, writes) = mpsc::channel();
        let every = Duration::from_millis(300);
        let (mut w, _guard) = spawn(Recorder(tx), pace(every, 1 << 20, 1 << 22), "t");
        let before_first = Instant::now();
        w.write_all(b"first\n").expect("a line is appended");
        assert_eq!(
            writes.recv_timeout(PATIENCE).expect("written in time"),
            b"first\n"
        );
        for i in 0..50 {
            w.write_all(format!("line {i}\n").as_bytes())
                .expect("a line is appended");
        }
        let batch = writes.recv_timeout(PATIENCE).expect("written in time");
        let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            String::from_utf8(batch).expect("text"),
            expected,
            "one write"
        );
        // The first write came after `before_first`, the second a period after it.
        assert!(
            before_first.elapsed() >= every,
            "the batch waited for the period"
        );
    }

    #[test]
    fn past_write_at_the_writer_does_not_wait_for_its_period() {
        let (tx, writes) = mpsc::channel();
        let (mut w, _guard) = spawn(
            Recorder(tx),
            pace(Duration::from_secs(3600), 1000, 1 << 22),
            "t",
        );
        w.write_all(b"first\n").expect("a line is appended");
        assert_eq!(
            writes.recv_timeout(PATIENCE).expect("written in time"),
            b"first\n"
        );
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..10 {
            w.write_all(line.as_bytes()).expect("a line is appended");
        }
        // The period is an hour: only the threshold can have sent these.
        let mut got = Vec::new();
        while got.len() < 1000 {
            got.extend(
                writes
                    .recv_timeout(PATIENCE)
                    .expect("written at the threshold"),
            );
        }
        assert_eq!(got, line.repeat(10).into_bytes());
    }

    #[test]
    fn the_guard_writes_out_what_waits_and_nothing_is_lost() {
        let (tx, writes) = mpsc::channel();
        let (w, guard) = spawn(
            Recorder(tx),
            pace(Duration::from_secs(3600), 1 << 20, 4096),
            "t",
        );
        // Four threads, 2,000 lines each, through a buffer that holds 4 KiB: they wait
        // for room rather than drop a line.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.write_all(format!("{t} {i}\n").as_bytes())
                            .expect("a line is appended");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a logging thread ends");
        }
        drop(w);
        drop(guard);
        // The sink goes when the writer's thread ends: read until then.
        let mut bytes = Vec::new();
        loop {
            match writes.recv_timeout(PATIENCE) {
                Ok(write) => bytes.extend(write),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the writer did not end: {e}"),
            }
        }
        let text = String::from_utf8(bytes).expect("text");
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .collect();
            let expected: Vec<String> = (0..2000).map(|i| format!("{t} {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, all, in order");
        }
        assert_eq!(text.lines().count(), 8000);
    }
}

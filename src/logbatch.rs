//! Log lines a connection worker writes are gathered on its thread and handed to the log
//! writer (`logwrite`) together, once per turn of the worker's scheduler, not one by one.
//!
//! The access log writes a line per request. Handed on one by one, each line would take
//! the writer's lock, which every worker shares. A worker instead appends its lines to a
//! buffer of its own and hands them on whole when its runtime has nothing left to run and
//! is about to wait for the network ([`hand_on`], the runtime's `on_thread_park`): after
//! the requests it has just served. A quiet worker's lines therefore go out as soon as
//! its request is done; a busy one's a few requests later, and at the latest when
//! [`HAND_ON`] bytes are waiting.
//!
//! Any other thread (the main runtime, blocking tasks, tools) writes each line through at
//! once, as the writer alone would. Lines are never dropped here: what is gathered is
//! handed on at the next park, at the threshold, or when the thread ends.

use std::cell::Cell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Gathered lines are handed on once this many bytes wait, even if the worker has not
/// parked: about seven access lines, for one turn of the writer's lock.
pub const HAND_ON: usize = 2 * 1024;

/// What a gathering thread keeps: its lines, and where they go.
struct Gathered {
    /// The writer the lines are handed to; a clone of the subscriber's, taken with the
    /// thread's first line.
    sink: Option<Box<dyn Write>>,
    /// Which [`Batched`] the sink was cloned from (its id, which its clones share): a
    /// line from another (a test's own subscriber) first hands on what the last one
    /// gathered.
    from: usize,
    bytes: Vec<u8>,
}

impl Gathered {
    fn hand_on(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        if let Some(sink) = self.sink.as_mut() {
            // The writer's queue never drops (`lossy(false)`): an error means the log
            // thread is gone, and nothing is left to write to.
            let _ = sink.write_all(&self.bytes);
        }
        self.bytes.clear();
        // A very long line does not keep its room.
        if self.bytes.capacity() > 4 * HAND_ON {
            self.bytes.shrink_to(2 * HAND_ON);
        }
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        self.hand_on();
    }
}

thread_local! {
    /// `Some` on a thread that gathers its lines ([`gather_on_this_thread`]).
    static GATHERED: Cell<Option<Gathered>> = const { Cell::new(None) };
}

/// From now on this thread's lines are gathered until [`hand_on`] (or [`HAND_ON`] bytes).
/// For a thread whose runtime calls [`hand_on`] when it parks.
pub fn gather_on_this_thread() {
    let kept = GATHERED.take();
    GATHERED.set(kept.or_else(|| {
        Some(Gathered {
            sink: None,
            from: 0,
            // Room for the threshold and the line that crosses it, allocated once.
            bytes: Vec::with_capacity(2 * HAND_ON),
        })
    }));
}

/// Hands this thread's gathered lines on, in one write; nothing on a thread that does
/// not gather.
pub fn hand_on() {
    let mut kept = GATHERED.take();
    if let Some(g) = kept.as_mut() {
        g.hand_on();
    }
    GATHERED.set(kept);
}

/// A subscriber's writer ([`MakeWriter`]) that gathers the lines of a gathering thread
/// and writes through on any other. Its clones gather into the same lines: what the
/// subscriber and a clone write (`logfmt`'s access lines) keeps its order, in one batch.
#[derive(Clone, Debug)]
pub struct Batched<W> {
    inner: W,
    id: usize,
}

impl<W> Batched<W> {
    pub fn new(inner: W) -> Batched<W> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Batched { inner, id }
    }
}

/// One line's writer from [`Batched`].
pub struct Line<'a, W> {
    inner: &'a W,
    id: usize,
    /// The writer for a thread that writes through, made at its first write.
    through: Option<W>,
}

impl<'a, W> MakeWriter<'a> for Batched<W>
where
    W: Write + Clone + 'static,
{
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            inner: &self.inner,
            id: self.id,
            through: None,
        }
    }
}

impl<W: Write + Clone + 'static> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut kept = GATHERED.take();
        let Some(g) = kept.as_mut() else {
            GATHERED.set(kept);
            return self
                .through
                .get_or_insert_with(|| self.inner.clone())
                .write(buf);
        };
        let from = self.id;
        if g.sink.is_none() || g.from != from {
            g.hand_on();
            g.sink = Some(Box::new(self.inner.clone()));
            g.from = from;
        }
        g.bytes.extend_from_slice(buf);
        if g.bytes.len() >= HAND_ON {
            g.hand_on();
        }
        GATHERED.set(kept);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.through.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that records each write it is given, as one entry.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("writes").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn taken(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *self.0.lock().expect("writes"))
        }
    }

    fn line(to: &Batched<Writes>, text: &str) {
        to.make_writer()
            .write_all(text.as_bytes())
            .expect("a line is written");
    }

    /// Runs `f` on a thread of its own (the gathering is per thread), to its end, with a
    /// log writer and what reaches it; returns what reached it after the thread ended.
    fn on_a_thread(f: impl FnOnce(&Batched<Writes>, &Writes) + Send + 'static) -> Vec<Vec<u8>> {
        let writes = Writes::default();
        let seen = writes.clone();
        std::thread::spawn(move || f(&Batched::new(writes.clone()), &writes))
            .join()
            .expect("the thread ends");
        seen.taken()
    }

    #[test]
    fn a_thread_that_does_not_gather_writes_each_line_at_once() {
        let after = on_a_thread(|to, writes| {
            line(to, "one\n");
            assert_eq!(writes.taken(), [b"one\n".to_vec()]);
            line(to, "two\n");
            assert_eq!(writes.taken(), [b"two\n".to_vec()]);
            hand_on();
            assert!(writes.taken().is_empty());
        });
        assert!(after.is_empty());
    }

    #[test]
    fn a_gathering_thread_hands_its_lines_on_together_when_asked() {
        let after = on_a_thread(|to, writes| {
            gather_on_this_thread();
            line(to, "one\n");
            line(to, "two\n");
            assert!(writes.taken().is_empty(), "nothing before the hand-on");
            hand_on();
            assert_eq!(writes.taken(), [b"one\ntwo\n".to_vec()]);
            hand_on();
            assert!(writes.taken().is_empty(), "nothing twice");
            line(to, "three\n");
            hand_on();
            assert_eq!(writes.taken(), [b"three\n".to_vec()]);
        });
        assert!(after.is_empty());
    }

    #[test]
    fn other_threads_still_write_through_while_one_gathers() {
        let writes = Writes::default();
        let to = Arc::new(Batched::new(writes.clone()));
        let (gathered, go_on) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn({
            let to = to.clone();
            move || {
                gather_on_this_thread();
                line(&to, "worker\n");
                gathered.send(()).expect("told");
                wait.recv().expect("told");
                hand_on();
            }
        });
        go_on.recv().expect("the worker wrote");
        line(&to, "main\n");
        assert_eq!(writes.taken(), [b"main\n".to_vec()]);
        done.send(()).expect("told");
        worker.join().expect("the worker ends");
        assert_eq!(writes.taken(), [b"worker\n".to_vec()]);
    }

    #[test]
    fn past_the_threshold_lines_are_handed_on_without_a_park() {
        let after = on_a_thread(|to, writes| {
            gather_on_this_thread();
            let text = format!("{}\n", "x".repeat(99));
            for _ in 0..HAND_ON / 100 {
                line(to, &text);
            }
            assert!(writes.taken().is_empty(), "below the threshold");
            line(to, &text);
            let handed = writes.taken();
            assert_eq!(handed.len(), 1, "one write");
            assert_eq!(handed.concat(), text.repeat(HAND_ON / 100 + 1).into_bytes());
        });
        assert!(after.is_empty());
    }

    #[test]
    fn what_a_thread_gathered_is_handed_on_when_it_ends() {
        let after = on_a_thread(|to, _| {
            gather_on_this_thread();
            line(to, "last\n");
        });
        assert_eq!(after, [b"last\n".to_vec()]);
    }

    #[test]
    fn each_line_goes_to_the_writer_it_was_written_to() {
        let after = on_a_thread(|to, writes| {
            gather_on_this_thread();
            let other = Writes::default();
            let to_other = Batched::new(other.clone());
            line(to, "first\n");
            line(&to_other, "second\n");
            assert_eq!(
                writes.taken(),
                [b"first\n".to_vec()],
                "handed on at the switch"
            );
            hand_on();
            assert_eq!(other.taken(), [b"second\n".to_vec()]);
        });
        assert!(after.is_empty());
    }

    #[test]
    fn a_clone_gathers_into_the_same_lines() {
        let after = on_a_thread(|to, writes| {
            gather_on_this_thread();
            let clone = to.clone();
            line(to, "first\n");
            line(&clone, "second\n");
            line(to, "third\n");
            assert!(writes.taken().is_empty(), "no hand-on between them");
            hand_on();
            assert_eq!(writes.taken(), [b"first\nsecond\nthird\n".to_vec()]);
        });
        assert!(after.is_empty());
    }

    #[test]
    fn asking_twice_to_gather_keeps_what_is_gathered() {
        let after = on_a_thread(|to, writes| {
            gather_on_this_thread();
            line(to, "kept\n");
            gather_on_this_thread();
            hand_on();
            assert_eq!(writes.taken(), [b"kept\n".to_vec()]);
        });
        assert!(after.is_empty());
    }
}

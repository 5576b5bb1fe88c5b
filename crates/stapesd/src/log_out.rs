//! Where log lines go: standard error, one `write(2)` per batch, written after the work
//! that logged them rather than in its middle.
//!
//! Every client request makes an INFO line, and a forwarded one makes a line on each of
//! the two members. Written at once, the line's `write(2)` (and the formatting before
//! it) sat between a handler's answer and the moment the answer went out: at one client
//! at a time it was the largest single cost on the request path after the network
//! itself. So a runtime worker thread holds its INFO, DEBUG and TRACE lines until it has
//! nothing left to run, and writes them then, in one go, just before it waits for the
//! next event. The client has its answer by then.
//!
//! ```text
//!  worker thread:  request ── handler ── line (held) ── answer written ── park: write held lines ── wait
//!  other threads:  line ── written at once
//! ```
//!
//! Bounds, so that a held line is never far behind:
//! - a worker that stays busy writes its held lines once they reach [`HELD_BYTES`] or the
//!   oldest is [`HELD_FOR`] old, checked at each new line;
//! - WARN and ERROR lines are never held: they first write what the thread holds (so the
//!   thread's lines keep their order), then themselves;
//! - only runtime workers hold lines, and only after their first park (the runtime calls
//!   [`park`] there); the main thread, the blocking pool and any other thread write at
//!   once;
//! - a worker that stops ([`stop`]), a panic (before its message) and the daemon's own
//!   exit ([`flush_all`]) write what is held.
//!
//! What a `kill -9` can lose is what a busy worker held at that instant: at most
//! [`HELD_FOR`] of its INFO lines. Each line keeps the time it was logged at.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The most bytes a busy worker holds before writing them.
pub const HELD_BYTES: usize = 16 * 1024;
/// The longest a busy worker holds a line (checked when it logs the next one).
pub const HELD_FOR: Duration = Duration::from_millis(50);

/// One thread's held lines.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    /// When the oldest held line was logged.
    since: Option<Instant>,
}

impl Held {
    /// Writes what is held, in one `write_all` under the stderr lock.
    fn write_out(&mut self) {
        if !self.bytes.is_empty() {
            let _ = sink(&self.bytes);
            self.bytes.clear();
        }
        self.since = None;
        if self.bytes.capacity() > 2 * HELD_BYTES {
            self.bytes.shrink_to(HELD_BYTES);
        }
    }
}

/// Standard error, in one `write_all` under its lock.
#[cfg(not(test))]
fn sink(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::io::stderr().lock().write_all(bytes)
}

/// What the tests' lines were written as, in order.
#[cfg(test)]
static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[cfg(test)]
fn sink(bytes: &[u8]) -> std::io::Result<()> {
    WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend_from_slice(bytes);
    Ok(())
}

type Slot = Arc<Mutex<Held>>;

/// Every holding thread's slot, for [`flush_all`].
static SLOTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's slot, once it holds lines (set by [`park`]).
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Held> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// For the runtime's `on_thread_park`: the worker has nothing to run, so it writes what it
/// holds (and from now on holds lines).
pub fn park() {
    let _ = SLOT.try_with(|cell| {
        let mut cell = cell.borrow_mut();
        let slot = cell.get_or_insert_with(|| {
            let slot = Slot::default();
            SLOTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(slot.clone());
            slot
        });
        lock(slot).write_out();
    });
}

/// For the runtime's `on_thread_stop`: writes what the thread holds and forgets its slot
/// (the runtime replaces workers over time, so slots must not pile up).
pub fn stop() {
    let _ = SLOT.try_with(|cell| {
        if let Some(slot) = cell.borrow_mut().take() {
            lock(&slot).write_out();
            SLOTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|s| !Arc::ptr_eq(s, &slot));
        }
    });
}

/// Writes what this thread holds (for the panic hook).
pub fn flush_this_thread() {
    let _ = SLOT.try_with(|cell| {
        if let Some(slot) = &*cell.borrow() {
            lock(slot).write_out();
        }
    });
}

/// Writes what every thread holds (before the process exits).
pub fn flush_all() {
    let slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for slot in &slots {
        lock(slot).write_out();
    }
}

/// Puts [`flush_this_thread`] in front of the current panic hook, so that a panic's
/// message comes after the lines its thread logged before it.
pub fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush_this_thread();
        previous(info);
    }));
}

/// The `MakeWriter` for the log output: standard error, with lines held as described
/// in the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// The writer for one log line.
pub struct Line {
    /// Whether the line may be held (its level is INFO or more verbose).
    holdable: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { holdable: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            holdable: matches!(*meta.level(), Level::INFO | Level::DEBUG | Level::TRACE),
        }
    }
}

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let held = SLOT
            .try_with(|cell| {
                let cell = cell.borrow();
                let Some(slot) = &*cell else { return false };
                let mut held = lock(slot);
                if !self.holdable {
                    held.write_out();
                    return false;
                }
                let now = Instant::now();
                let since = *held.since.get_or_insert(now);
                held.bytes.extend_from_slice(buf);
                if held.bytes.len() >= HELD_BYTES || now.duration_since(since) >= HELD_FOR {
                    held.write_out();
                }
                true
            })
            .unwrap_or(false);
        if held {
            return Ok(());
        }
        sink(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn info(line: &str) {
        Line { holdable: true }.write_all(line.as_bytes()).unwrap();
    }

    fn warn(line: &str) {
        Line { holdable: false }.write_all(line.as_bytes()).unwrap();
    }

    fn written() -> String {
        String::from_utf8_lossy(&WRITTEN.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    fn held_here() -> usize {
        SLOT.with(|cell| cell.borrow().as_ref().map_or(0, |s| lock(s).bytes.len()))
    }

    /// Runs `f` on a thread of its own (each test's thread-local slot is fresh).
    fn on_a_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn a_thread_that_never_parked_writes_at_once() {
        on_a_thread(|| {
            info("t1 info\n");
            assert!(written().contains("t1 info\n"));
            assert!(SLOT.with(|c| c.borrow().is_none()));
        });
    }

    #[test]
    fn a_worker_holds_info_until_it_parks() {
        on_a_thread(|| {
            park();
            info("t2 first\n");
            info("t2 second\n");
            assert!(!written().contains("t2 first"));
            assert_eq!(held_here(), "t2 first\nt2 second\n".len());
            park();
            assert_eq!(held_here(), 0);
            assert!(written().contains("t2 first\nt2 second\n"));
        });
    }

    #[test]
    fn a_warning_is_never_held_and_comes_after_what_was() {
        on_a_thread(|| {
            park();
            info("t3 info\n");
            warn("t3 warn\n");
            assert_eq!(held_here(), 0);
            let all = written();
            let (info_at, warn_at) = (all.find("t3 info\n"), all.find("t3 warn\n"));
            assert!(info_at.is_some() && info_at < warn_at, "{all}");
        });
    }

    #[test]
    fn a_busy_worker_writes_at_the_size_bound() {
        on_a_thread(|| {
            park();
            let long = format!("t4 {}\n", "x".repeat(HELD_BYTES / 2));
            info(&long);
            assert!(held_here() > 0);
            info(&long);
            assert_eq!(held_here(), 0, "at {HELD_BYTES} bytes the lines are written");
            assert!(written().contains(&format!("{long}{long}")));
        });
    }

    #[test]
    fn a_busy_worker_writes_at_the_age_bound() {
        on_a_thread(|| {
            park();
            info("t5 old\n");
            SLOT.with(|c| lock(c.borrow().as_ref().unwrap()).since = Instant::now().checked_sub(HELD_FOR));
            info("t5 new\n");
            assert_eq!(held_here(), 0, "the oldest line was HELD_FOR old");
            assert!(written().contains("t5 old\nt5 new\n"));
        });
    }

    #[test]
    fn a_stopped_worker_writes_and_leaves_no_slot() {
        on_a_thread(|| {
            park();
            info("t7 held\n");
            let slot = SLOT.with(|c| c.borrow().clone().unwrap());
            stop();
            info("t7 after\n");
            assert!(written().contains("t7 after\n"));
            assert_eq!(held_here(), 0, "a stopped thread holds nothing");
            assert!(written().contains("t7 held\n"));
            let slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(!slots.iter().any(|s| Arc::ptr_eq(s, &slot)));
        });
    }

    #[test]
    fn flush_all_writes_what_other_threads_hold() {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            park();
            info("t6 held\n");
            held_tx.send(()).unwrap();
            done_rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        assert!(!written().contains("t6 held"));
        flush_all();
        assert!(written().contains("t6 held\n"));
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }
}

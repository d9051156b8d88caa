//! The access log's output and its one writer thread: lines arrive on a bounded
//! queue, are formatted into a reused buffer and written a batch per call; the
//! file is reopened by path on request (SIGUSR1) and flushes are acknowledged.

use super::format::format_line;
use super::Record;
use crate::config::{AccessLogFormat, AccessLogTarget};
use crate::metrics::Total;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most lines formatted before a write, so a full queue is written in a few calls.
const BATCH_LINES: usize = 1024;
/// How long the writer lets lines gather after the first one: while it sleeps, a
/// connection's send wakes no thread (only a receiver blocked in `recv` is woken),
/// so under load the data path pays no wake-up and the log one write per period.
/// Lines reach the file at most this late.
const GATHER: Duration = Duration::from_millis(50);
/// Mode of a new log file: the owner writes, its group reads.
const FILE_MODE: u32 = 0o640;

/// Where lines go: standard error, a file (reopened by path), or any writer (tests).
pub struct Output {
    writer: Box<dyn Write + Send>,
    /// The file's path, for a reopen.
    path: Option<PathBuf>,
}

impl Output {
    /// What `target` names, opened: a file for append, created with mode 0640.
    pub fn open(target: &AccessLogTarget) -> io::Result<Option<Output>> {
        Ok(match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stderr => Some(Output {
                writer: Box::new(io::stderr()),
                path: None,
            }),
            AccessLogTarget::File(path) => Some(Output {
                writer: Box::new(open_file(path)?),
                path: Some(path.clone()),
            }),
        })
    }

    /// Any writer (tests: one that is slow on purpose).
    pub fn custom(writer: impl Write + Send + 'static) -> Output {
        Output {
            writer: Box::new(writer),
            path: None,
        }
    }

    /// A file output opens its path again (logrotate renamed the old one); on
    /// failure it keeps writing to the file it has.
    fn reopen(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        match open_file(path) {
            Ok(file) => {
                self.writer = Box::new(file);
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; writing on to the old file");
            }
        }
    }
}

fn open_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// A new format, and a new output when `Some` (`Some(None)`: no output).
type Setting = (Option<Option<Output>>, AccessLogFormat);

enum Msg {
    Line(Record),
    /// From here on, this output and format: lines queued before it are
    /// written as they were meant to be.
    Set(Setting),
    /// Open the file again by its path (after a rotation).
    Reopen,
    /// Answer once everything queued before is written.
    Flush(SyncSender<()>),
}

/// What the queue had no room for, applied after the writer's next batch.
#[derive(Default)]
struct Control {
    pending: Mutex<Option<Setting>>,
    reopen: AtomicBool,
}

/// The sending side; the writer thread ends when it drops.
pub(super) struct Queue {
    tx: SyncSender<Msg>,
    control: Arc<Control>,
}

impl Queue {
    /// Starts the writer thread with a queue of `capacity` lines and no output.
    pub(super) fn start(capacity: usize, dropped: Arc<Total>) -> io::Result<Queue> {
        // An array-based channel: a send is a few atomics, never a lock.
        let (tx, rx) = mpsc::sync_channel(capacity);
        let control = Arc::new(Control::default());
        let theirs = control.clone();
        std::thread::Builder::new()
            .name("edgelb-access-log".into())
            .spawn(move || run(&rx, &theirs, &dropped))?;
        Ok(Queue { tx, control })
    }

    pub(super) fn try_send(&self, record: Record) -> bool {
        self.tx.try_send(Msg::Line(record)).is_ok()
    }

    /// A new format, and a new output when `output` is `Some`, in queue order.
    /// The control plane never waits either: with the queue full, the change
    /// waits in [`Control`] for the end of the writer's next batch (and so does
    /// every later change until then, to keep their order).
    pub(super) fn set(&self, output: Option<Option<Output>>, format: AccessLogFormat) {
        let mut pending = self
            .control
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.is_some() {
            *pending = Some((output, format));
        } else if let Err(TrySendError::Full(Msg::Set(setting))) =
            self.tx.try_send(Msg::Set((output, format)))
        {
            *pending = Some(setting);
        }
    }

    /// In queue order too; with the queue full, after the writer's next batch.
    pub(super) fn reopen(&self) {
        if self.tx.try_send(Msg::Reopen).is_err() {
            self.control.reopen.store(true, Ordering::Release);
        }
    }

    pub(super) fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (ack, acked) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        acked
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The writer thread: until every sender is gone, wait for a line, let more
/// gather for [`GATHER`], then format and write everything queued, a write per
/// [`BATCH_LINES`].
fn run(rx: &Receiver<Msg>, control: &Control, dropped: &Total) {
    let mut batch = Batch {
        output: None,
        format: AccessLogFormat::Text,
        buf: Vec::with_capacity(BATCH_LINES * 256),
        lines: 0,
        warned: false,
    };
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        std::thread::sleep(GATHER);
        // In queue order: lines queued before a reopen or a change was asked for
        // (its wake) go to the output they were meant for, even when the change
        // turns the log off; lines after it, to the new one.
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(record) => batch.add(&record, dropped),
                Msg::Set(setting) => {
                    batch.write(dropped);
                    batch.set(setting);
                }
                Msg::Reopen => {
                    batch.write(dropped);
                    batch.reopen();
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        batch.write(dropped);
        // What the full queue had no room for applies from the next batch.
        let pending = control
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(setting) = pending {
            batch.set(setting);
        }
        if control.reopen.swap(false, Ordering::AcqRel) {
            batch.reopen();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Lines formatted and not yet written.
struct Batch {
    output: Option<Output>,
    format: AccessLogFormat,
    buf: Vec<u8>,
    lines: u64,
    /// A write failed and was logged; quiet until one succeeds.
    warned: bool,
}

impl Batch {
    fn set(&mut self, (output, format): Setting) {
        self.format = format;
        if let Some(output) = output {
            self.output = output;
        }
    }

    fn reopen(&mut self) {
        if let Some(out) = self.output.as_mut() {
            out.reopen();
        }
    }

    fn add(&mut self, record: &Record, dropped: &Total) {
        if self.output.is_none() {
            return;
        }
        format_line(record, self.format, &mut self.buf);
        self.lines += 1;
        if self.lines >= BATCH_LINES as u64 {
            self.write(dropped);
        }
    }

    fn write(&mut self, dropped: &Total) {
        if let (Some(out), false) = (self.output.as_mut(), self.buf.is_empty()) {
            match out
                .writer
                .write_all(&self.buf)
                .and_then(|()| out.writer.flush())
            {
                Ok(()) => self.warned = false,
                Err(e) => {
                    dropped.increment(self.lines);
                    if !self.warned {
                        tracing::error!(error = %e, lines = self.lines, "cannot write the access log; lines dropped");
                        self.warned = true;
                    }
                }
            }
        }
        self.buf.clear();
        self.lines = 0;
    }
}

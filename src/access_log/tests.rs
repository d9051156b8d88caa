//! The access log's lines, its queue under a slow writer, and reopen.

use super::*;
use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::sync::Condvar;

fn record(end: End, backend: bool) -> Record {
    Record {
        ended_unix_ms: 1_796_051_764_123,
        client: "10.1.2.3:40000".parse().unwrap(),
        listener: Arc::new(ListenerKey::new("lb-1", 80)),
        server_id: backend.then(|| Arc::from("i-\"b\\1")),
        backend: backend.then(|| "[fd00::1]:8080".parse().unwrap()),
        connect_ms: backend.then_some(3),
        duration_ms: 1250,
        bytes_in: 77,
        bytes_out: 1_000_000,
        end,
    }
}

fn line(r: &Record, format: AccessLogFormat) -> String {
    let mut out = Vec::new();
    format_line(r, format, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn text_lines_have_the_fields_in_order_and_dashes_for_none() {
    assert_eq!(
        line(&record(End::ClientClosed, true), AccessLogFormat::Text),
        "2026-11-30T15:16:04.123Z 10.1.2.3:40000 lb-1:80 i-\"b\\1 [fd00::1]:8080 3 1250 77 1000000 client_closed\n"
    );
    assert_eq!(
        line(&record(End::NoBackend, false), AccessLogFormat::Text),
        "2026-11-30T15:16:04.123Z 10.1.2.3:40000 lb-1:80 - - - 1250 77 1000000 no_backend\n"
    );
}

#[test]
fn json_lines_parse_with_typed_numbers_and_nulls() {
    let text = line(&record(End::BackendError, true), AccessLogFormat::Json);
    assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let spec_order = [
        "time",
        "client",
        "listener",
        "server_id",
        "backend",
        "connect_ms",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "end",
    ];
    // serde_json's map is sorted; the order on the line is checked below.
    let mut sorted = spec_order.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert_eq!(v["time"], "2026-11-30T15:16:04.123Z");
    assert_eq!(v["server_id"], "i-\"b\\1");
    assert_eq!(v["backend"], "[fd00::1]:8080");
    assert_eq!(v["connect_ms"].as_u64(), Some(3));
    assert_eq!(v["bytes_out"].as_u64(), Some(1_000_000));
    assert_eq!(v["end"], "backend_error");
    let positions: Vec<usize> = spec_order
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");

    let none = line(&record(End::MaxConnections, false), AccessLogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&none).unwrap();
    assert!(v["server_id"].is_null() && v["backend"].is_null() && v["connect_ms"].is_null());
    assert_eq!(v["end"], "max_connections");
}

#[test]
fn every_end_has_its_spec_name() {
    let names: Vec<&str> = End::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "client_closed",
            "backend_closed",
            "idle_timeout",
            "client_error",
            "backend_error",
            "no_backend",
            "connect_failed",
            "max_connections",
            "drain"
        ]
    );
}

/// A writer that takes nothing until the gate opens, then counts the lines.
#[derive(Clone, Default)]
struct Gated {
    gate: Arc<(Mutex<bool>, Condvar)>,
    lines: Arc<AtomicUsize>,
}

impl Gated {
    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut open = self.gate.0.lock().unwrap();
        while !*open {
            open = self.gate.1.wait(open).unwrap();
        }
        let lines = buf.iter().filter(|&&b| b == b'\n').count();
        self.lines.fetch_add(lines, Ordering::SeqCst);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_writer_never_blocks_the_producer_and_every_line_is_written_or_counted() {
    let log = std::sync::Arc::new(AccessLog::new());
    let out = Gated::default();
    log.start_with(Output::custom(out.clone()), AccessLogFormat::Json);
    let n = 3 * QUEUE_LINES;
    // The writer stays stuck until every call has returned: a call that waited
    // for it would never return, and the producer would miss its deadline (a
    // generous one: only a wait for the writer can exceed it).
    let (done, finished) = std::sync::mpsc::channel();
    let producer = log.clone();
    std::thread::spawn(move || {
        for _ in 0..n {
            producer.log(record(End::ClientClosed, true));
        }
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(60)).is_ok(),
        "a call waited for the stuck writer"
    );
    // The writer holds at most one batch and the queue its capacity: the rest
    // is dropped and counted.
    let dropped = log.dropped() as usize;
    assert!(
        dropped >= n - QUEUE_LINES - 1024 - 1,
        "dropped {dropped} of {n}"
    );
    out.open();
    assert!(log.flush(Duration::from_secs(10)));
    assert_eq!(out.lines.load(Ordering::SeqCst) + dropped, n);
}

fn temp_dir() -> PathBuf {
    crate::testing::temp_dir("access-log")
}

#[test]
fn a_file_is_created_0640_appended_to_and_reopened_by_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let path = dir.join("access.log");
    std::fs::write(&path, "kept\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = AccessLog::new();
    let target = AccessLogTarget::File(path.clone());
    let change = log.prepare(&target, AccessLogFormat::Text).unwrap();
    log.commit(change.unwrap());
    assert!(log.is_on());
    assert!(log
        .prepare(&target, AccessLogFormat::Text)
        .unwrap()
        .is_none());
    log.log(record(End::IdleTimeout, true));
    assert!(log.flush(Duration::from_secs(10)));
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    log.log(record(End::Drain, true));
    assert!(log.flush(Duration::from_secs(10)));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.starts_with("kept\n") && old.ends_with("idle_timeout\n"),
        "{old}"
    );
    assert_eq!(old.lines().count(), 2);
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(
        new.ends_with(" drain\n") && new.lines().count() == 1,
        "{new}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // 0640 less the umask (022 or 002 here); never more than 0640.
    assert_eq!(mode & !0o640, 0, "{mode:o}");
    assert_eq!(mode & 0o600, 0o600, "{mode:o}");

    // Off: nothing is built or written; a new format applies to the same file.
    log.commit(
        log.prepare(&AccessLogTarget::Off, AccessLogFormat::Text)
            .unwrap()
            .unwrap(),
    );
    assert!(!log.is_on());
    log.commit(
        log.prepare(&target, AccessLogFormat::Json)
            .unwrap()
            .unwrap(),
    );
    log.log(record(End::Drain, false));
    assert!(log.flush(Duration::from_secs(10)));
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(
        new.lines().nth(1).unwrap().starts_with("{\"time\""),
        "{new}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lines_queued_before_the_log_is_turned_off_are_still_written() {
    let dir = temp_dir();
    let path = dir.join("access.log");
    let log = AccessLog::new();
    let target = AccessLogTarget::File(path.clone());
    log.commit(
        log.prepare(&target, AccessLogFormat::Text)
            .unwrap()
            .unwrap(),
    );
    // Connections that ended before a reload turned the log off: their lines are
    // still in the queue (the writer gathers for 50 ms) when the change comes.
    for _ in 0..100 {
        log.log(record(End::ClientClosed, true));
    }
    log.commit(
        log.prepare(&AccessLogTarget::Off, AccessLogFormat::Text)
            .unwrap()
            .unwrap(),
    );
    log.log(record(End::Drain, true)); // not built by a connection when off
    assert!(log.flush(Duration::from_secs(10)));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 100, "{text}");
    assert!(text.lines().all(|l| l.ends_with(" client_closed")));
    assert_eq!(log.dropped(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_that_cannot_be_opened_is_an_error_and_changes_nothing() {
    let log = AccessLog::new();
    let missing = AccessLogTarget::File(PathBuf::from("/nonexistent-edgelb/dir/access.log"));
    let err = log.prepare(&missing, AccessLogFormat::Text).err().unwrap();
    assert!(
        err.to_string()
            .contains("/nonexistent-edgelb/dir/access.log"),
        "{err}"
    );
    assert!(!log.is_on());
}

//! The access log's costs: formatting a line on the writer thread (text, JSON),
//! and what a connection pays to hand a record over (`AccessLog::log`), with the
//! writer thread draining to a sink.

use criterion::{criterion_group, criterion_main, Criterion};
use edgelb::access_log::{format_line, AccessLog, End, Output, Record};
use edgelb::config::{AccessLogFormat, ListenerKey};
use std::hint::black_box;
use std::sync::Arc;

fn record() -> Record {
    Record {
        ended_unix_ms: 1_796_051_764_123,
        client: "203.0.113.7:50122"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        listener: Arc::new(ListenerKey::new("lb-5ovkn1piwqmoqrfjdyhq4", 80)),
        server_id: Some(Arc::from("i-backend-1")),
        backend: Some(([10, 0, 0, 11], 8080).into()),
        connect_ms: Some(1),
        duration_ms: 1250,
        bytes_in: 517,
        bytes_out: 18_304,
        end: End::BackendClosed,
    }
}

fn bench(c: &mut Criterion) {
    let r = record();
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, format) in [
        ("text", AccessLogFormat::Text),
        ("json", AccessLogFormat::Json),
    ] {
        c.bench_function(&format!("access_log/format_{name}"), |b| {
            b.iter(|| {
                if buf.len() > (1 << 20) - 512 {
                    buf.clear();
                }
                format_line(black_box(&r), format, &mut buf);
            })
        });
    }
    let log = AccessLog::new();
    log.start_with(Output::custom(std::io::sink()), AccessLogFormat::Text);
    c.bench_function("access_log/log_one_record", |b| {
        b.iter(|| log.log(black_box(record())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

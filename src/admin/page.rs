//! `GET /`: the status page for people, in the spirit of HAProxy's stats page. One
//! table per listener: its own row first, then a row per backend whose health shows
//! as a colour and as a word. Server-rendered, no scripts, no external assets; it
//! reloads itself every [`REFRESH_SECS`].

use super::status::{collect, BackendStatus, ListenerStatus};
use crate::server::Server;
use crate::state::unix_millis;
use std::fmt::Write;

/// How often the page reloads itself.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}
h2{font-size:1.1em;margin:1.6em 0 .4em}
.meta{color:#666;margin-bottom:1em}
.meta a{color:#1565c0}
table{border-collapse:collapse;background:#fff;width:100%;max-width:90em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}
td.addr{white-space:normal;word-break:break-all}
.sub{color:#607d8b;font-weight:normal}
th{background:#37474f;color:#fff;font-weight:600}
tr.head th{background:#eceff1;color:#37474f}
tr.listener td{background:#e3f2fd;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.health{font-weight:600}
.health::before{content:'';display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.4em;background:currentColor}
.healthy{background:#c8e6c9;color:#1b5e20}
.unknown{background:#e0e0e0;color:#424242}
.unhealthy{background:#ffcdd2;color:#b71c1c}
.failopen{background:#ffcdd2;color:#b71c1c;font-weight:600}
.running{color:#1b5e20}
.stopped{color:#757575}
.ready{color:#1b5e20;font-weight:600}
.notready{color:#b71c1c;font-weight:600}
";

/// The whole page. `server` is `None` before the listeners are bound.
pub fn status_page(server: Option<&Server>, ready: bool) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>edgelb status</title><style>{STYLE}</style></head><body>\n\
         <h1>edgelb {}</h1>\n<div class=\"meta\">{} &middot; refreshes every {REFRESH_SECS} s \
         &middot; <a href=\"/status\">/status</a> (JSON) &middot; <a href=\"/metrics\">/metrics</a></div>\n",
        env!("CARGO_PKG_VERSION"),
        if ready {
            "<span class=\"ready\">ready</span>"
        } else {
            "<span class=\"notready\">not ready</span>"
        },
    );
    let listeners = server.map(collect).unwrap_or_default();
    if listeners.is_empty() {
        html.push_str("<p>No listeners.</p>\n");
    }
    let now = unix_millis();
    for l in &listeners {
        listener_table(&mut html, l, now);
    }
    html.push_str("</body></html>\n");
    html
}

fn listener_table(html: &mut String, l: &ListenerStatus, now: u64) {
    let _ = write!(
        html,
        "<h2>{}:{}{}</h2>\n<table class=\"listener-table\">\n\
         <tr><th>Listener</th><th>Address</th><th>Status</th><th>Scheduler</th>\
         <th>Active</th><th>Total</th><th>Fail-open</th><th>Bytes in</th><th>Bytes out</th>\
         <th title=\"Entries in the persistence table\">Persistence</th></tr>\n",
        escape(&l.load_balancer_id),
        l.listener_port,
        l.description
            .as_deref()
            .map(|d| format!(" &mdash; {}", escape(d)))
            .unwrap_or_default(),
    );
    let address = match &l.bound_address {
        Some(bound) if *bound != l.address => format!(
            "{}<span class=\"sub\"> (on {})</span>",
            escape(&l.address),
            escape(bound)
        ),
        _ => escape(&l.address),
    };
    let (fail_class, fail_text) = if l.fail_open {
        (" failopen", "yes")
    } else {
        ("", "no")
    };
    let _ = writeln!(
        html,
        "<tr class=\"listener\"><td>:{}</td><td class=\"addr\">{}</td><td class=\"{}\">{}</td><td>{}</td>\
         {}{}<td class=\"fail-open{fail_class}\">{fail_text}</td>{}{}{}</tr>",
        l.listener_port,
        address,
        l.status,
        l.status,
        l.scheduler,
        num(l.active_connections),
        num(l.connections_total),
        bytes(l.bytes_in),
        bytes(l.bytes_out),
        num(l.persistence_entries),
    );
    html.push_str(
        "<tr class=\"head\"><th>Backend</th><th>Address</th><th>Health</th><th>Weight</th>\
         <th>Active</th><th>Total</th><th title=\"Failed connects to this backend\">Conn. failures</th><th>Bytes in</th><th>Bytes out</th>\
         <th title=\"Time since the health last changed\">Last change</th></tr>\n",
    );
    for b in &l.backends {
        backend_row(html, b, now);
    }
    html.push_str("</table>\n");
}

fn backend_row(html: &mut String, b: &BackendStatus, now: u64) {
    let _ = writeln!(
        html,
        "<tr class=\"backend\"><td>{}</td><td class=\"addr\">{}</td><td class=\"health {}\">{}</td>{}{}{}{}{}{}\
         <td class=\"num\">{}</td></tr>",
        escape(&b.server_id),
        escape(&b.address),
        b.health,
        b.health,
        num(u64::from(b.weight)),
        num(b.active_connections),
        num(b.connections_total),
        num(b.connect_failures),
        bytes(b.bytes_in),
        bytes(b.bytes_out),
        since(now.saturating_sub(b.last_change_unix_ms)),
    );
}

fn num(n: u64) -> String {
    format!("<td class=\"num\">{n}</td>")
}

/// A byte count in binary units, the exact count in the tooltip.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let shown = if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    };
    format!("<td class=\"num\" title=\"{n} bytes\">{shown}</td>")
}

/// `ms` as the two largest units: `45s`, `3m 12s`, `2h 5m`, `4d 1h`.
fn since(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<b a=\"1\">&'x'</b>"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;x&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(since(999), "0s");
        assert_eq!(since(192_000), "3m 12s");
        assert_eq!(since(7_500_000), "2h 5m");
        assert_eq!(since(90_000_000), "1d 1h");
        assert!(bytes(512).contains(">512 B<"));
        assert!(bytes(3 * 1024 * 1024).contains(">3.0 MiB<"));
    }
}

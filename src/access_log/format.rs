//! The two line formats of the access log and the RFC 3339 time they start with,
//! written into the writer thread's buffer (no allocation once it has grown).

use super::Record;
use crate::config::AccessLogFormat;
use std::io::Write;

/// Appends `record` as one line (with its `\n`) in `format` to `out`.
pub fn format_line(record: &Record, format: AccessLogFormat, out: &mut Vec<u8>) {
    match format {
        AccessLogFormat::Text => text(record, out),
        AccessLogFormat::Json => json(record, out),
    }
}

/// `time client listener server_id backend connect_ms duration_ms bytes_in
/// bytes_out end`, space-separated, `-` for none. Ids never hold spaces (the
/// config's rule), so every line has ten fields.
fn text(r: &Record, out: &mut Vec<u8>) {
    rfc3339_millis(r.ended_unix_ms, out);
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        " {} {}:{} ",
        r.client, r.listener.load_balancer_id, r.listener.listener_port
    );
    match &r.server_id {
        Some(id) => out.extend_from_slice(id.as_bytes()),
        None => out.push(b'-'),
    }
    let _ = match r.backend {
        Some(addr) => write!(out, " {addr} "),
        None => write!(out, " - "),
    };
    let _ = match r.connect_ms {
        Some(ms) => write!(out, "{ms}"),
        None => write!(out, "-"),
    };
    let _ = writeln!(
        out,
        " {} {} {} {}",
        r.duration_ms,
        r.bytes_in,
        r.bytes_out,
        r.end.as_str()
    );
}

/// One JSON object, the SPEC's names in its order, numbers as numbers, `null` for
/// none.
fn json(r: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_millis(r.ended_unix_ms, out);
    let _ = write!(out, "\",\"client\":\"{}\",\"listener\":\"", r.client);
    json_escaped(&r.listener.load_balancer_id, out);
    let _ = write!(out, ":{}\",\"server_id\":", r.listener.listener_port);
    match &r.server_id {
        Some(id) => {
            out.push(b'"');
            json_escaped(id, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = match r.backend {
        Some(addr) => write!(out, ",\"backend\":\"{addr}\""),
        None => write!(out, ",\"backend\":null"),
    };
    let _ = match r.connect_ms {
        Some(ms) => write!(out, ",\"connect_ms\":{ms}"),
        None => write!(out, ",\"connect_ms\":null"),
    };
    let _ = writeln!(
        out,
        ",\"duration_ms\":{},\"bytes_in\":{},\"bytes_out\":{},\"end\":\"{}\"}}",
        r.duration_ms,
        r.bytes_in,
        r.bytes_out,
        r.end.as_str()
    );
}

/// `s` as the inside of a JSON string: ids may hold `"` or `\` (printable, no
/// spaces is all the config asks).
fn json_escaped(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds:
/// `2026-11-30T15:16:04.123Z` (humantime writes it through a stack buffer: no
/// allocation).
pub fn rfc3339_millis(unix_ms: u64, out: &mut Vec<u8>) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(time));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(ms: u64) -> String {
        let mut out = Vec::new();
        rfc3339_millis(ms, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn known_instants() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(time(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(time(1_709_251_199_001), "2024-02-29T23:59:59.001Z");
        assert_eq!(time(1_796_051_764_123), "2026-11-30T15:16:04.123Z");
        assert_eq!(time(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }

    /// Every day from 1970 to 2400 follows the one before as a calendar says
    /// (month lengths, the 4/100/400 leap rule).
    #[test]
    fn every_day_follows_the_calendar() {
        let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: u64, m: u64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expected = (1970, 1, 1);
        for days in 0..(430 * 366) {
            let line = time(days * 86_400_000);
            let field = |r: std::ops::Range<usize>| line[r].parse::<u64>().unwrap();
            let got = (field(0..4), field(5..7), field(8..10));
            assert_eq!(got, expected, "day {days}");
            let (y, m, d) = expected;
            expected = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}

//! A strict parser of the Prometheus text exposition format (0.0.4), so the tests
//! can hold `/metrics` to the format rather than to what one exporter happens to do.
//! Stricter than Prometheus in one way: every family needs a `# TYPE` line.

use std::collections::{BTreeMap, HashMap, HashSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub families: HashMap<String, Family>,
}

impl Exposition {
    /// The one sample of `name` (a sample name, e.g. `x_bucket`) whose labels include
    /// `labels`; panics when there is none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        match found.as_slice() {
            [one] => one.value,
            _ => panic!(
                "{} samples of {name} with {labels:?}: {found:?}",
                found.len()
            ),
        }
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value: a decimal float, `NaN`, `+Inf` or `-Inf`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            && !s.is_empty() =>
        {
            s.parse().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y\"z"}` from the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = rest[end + 1..].trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (Labels::new(), &line[name_end..])
    };
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    let value = parse_value(fields.next().ok_or("sample without value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The family a sample name belongs to, given the family declared last.
fn family_of<'a>(sample: &'a str, current: Option<(&str, &str)>) -> &'a str {
    if let Some((family, "histogram")) = current {
        for suffix in ["_bucket", "_sum", "_count"] {
            if sample.strip_suffix(suffix) == Some(family) {
                return &sample[..family.len()];
            }
        }
    }
    sample
}

/// Parses `text`, checking the grammar, TYPE before samples, families contiguous,
/// no duplicate series, and histogram consistency.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut seen: HashSet<(String, Labels)> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().unwrap_or("");
            let rest = parts.next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if closed.contains(name) || out.families.contains_key(name) {
                    return Err(at(format!("family {name} is not contiguous")));
                }
                if let Some(previous) = current.take() {
                    closed.insert(previous);
                }
                current = Some(name.to_string());
            }
            let family = out.families.entry(name.to_string()).or_default();
            if keyword == "HELP" {
                if family.help.is_some() || !family.samples.is_empty() {
                    return Err(at("HELP twice or after samples".into()));
                }
                if rest.contains('\\') && rest.replace("\\\\", "").replace("\\n", "").contains('\\')
                {
                    return Err(at("bad escape in HELP".into()));
                }
                family.help = Some(rest.to_string());
            } else {
                if !family.kind.is_empty() || !family.samples.is_empty() {
                    return Err(at("TYPE twice or after samples".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest) {
                    return Err(at(format!("bad type {rest:?}")));
                }
                family.kind = rest.to_string();
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let declared = current
            .as_deref()
            .map(|c| (c, out.families[c].kind.as_str()));
        let family_name = family_of(&sample.name, declared);
        if current.as_deref() != Some(family_name) || declared.is_some_and(|(_, k)| k.is_empty()) {
            return Err(at(format!(
                "sample of {family_name} without its TYPE line before it"
            )));
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        let family = out.families.get_mut(family_name).ok_or("unreachable")?;
        if family.kind == "histogram" && sample.name.ends_with("_bucket") {
            let le = sample
                .labels
                .get("le")
                .ok_or_else(|| at("bucket without le".into()))?;
            parse_value(le).map_err(at)?;
        } else if sample.labels.contains_key("le") && family.kind == "histogram" {
            return Err(at("le on a non-bucket sample".into()));
        }
        family.samples.push(sample);
    }
    for (name, family) in &out.families {
        if family.kind.is_empty() {
            return Err(format!("family {name} has no TYPE"));
        }
        if family.kind == "histogram" {
            check_histogram(name, family)?;
        }
    }
    Ok(out)
}

/// Buckets ascending in `le` with non-decreasing counts, a `+Inf` bucket equal to
/// `_count`, and a `_sum`, for every label set.
fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    /// `(le, count)` buckets, `_sum`, `_count` of one label set.
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut series: BTreeMap<Labels, Series> = BTreeMap::new();
    for s in &family.samples {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let entry = series.entry(labels).or_default();
        match (&s.name[name.len()..], le) {
            ("_bucket", Some(le)) => entry.0.push((parse_value(&le)?, s.value)),
            ("_sum", None) => entry.1 = Some(s.value),
            ("_count", None) => entry.2 = Some(s.value),
            (suffix, _) => return Err(format!("{name}: unexpected sample {name}{suffix}")),
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let what = format!("{name}{labels:?}");
        let count = count.ok_or(format!("{what}: no _count"))?;
        sum.ok_or(format!("{what}: no _sum"))?;
        if !buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        {
            return Err(format!("{what}: buckets not ascending and cumulative"));
        }
        match buckets.last() {
            Some(&(le, n)) if le == f64::INFINITY && n == count => {}
            _ => return Err(format!("{what}: no +Inf bucket equal to _count")),
        }
    }
    Ok(())
}

#[test]
fn the_parser_accepts_good_text_and_rejects_bad() {
    let good = "# HELP a_total A \\\\ thing\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\n\n\
                # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n\
                # TYPE g gauge\ng -1.5e3 1700000000\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[("x", "q\"\\\n")]), 3.0);
    assert_eq!(parsed.value("g", &[]), -1500.0);
    let bad = [
        "a 1\n",                                                          // no TYPE
        "# TYPE a counter\na{x=\"1\"} one\n",                             // value
        "# TYPE a counter\na{x=1} 1\n",                                   // unquoted
        "# TYPE a counter\na{x=\"\\t\"} 1\n",                             // escape
        "# TYPE a counter\na{1x=\"1\"} 1\n",                              // label name
        "# TYPE 1a counter\n1a 1\n",                                      // metric name
        "# TYPE a counter\na 1\na 2\n",                                   // duplicate
        "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\n# TYPE a counter\n", // not contiguous
        "# TYPE a counter\nb 1\n",                                        // wrong family
        "# TYPE a counter\na 1\n# TYPE a counter\n",                      // TYPE twice
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", // count
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",       // no sum
    ];
    for text in bad {
        assert!(parse(text).is_err(), "accepted: {text:?}");
    }
}

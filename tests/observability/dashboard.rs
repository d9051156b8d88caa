//! `config/grafana-dashboard.json` imports into Grafana and queries only what edgelb
//! exports.

use edgelb::metrics::ALL;
use std::collections::BTreeSet;

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

/// The `edgelb_*` names an expression uses.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("edgelb_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// A series name edgelb exports: a metric, or a histogram's `_bucket`/`_sum`/`_count`.
fn exported(name: &str) -> bool {
    ALL.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|m| m.ends_with("_seconds") && ALL.contains(&m))
        })
}

#[test]
fn the_grafana_dashboard_imports_and_queries_only_exported_metrics() {
    let d = dashboard();
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let requires: Vec<&str> = d["__requires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        requires.contains(&"grafana") && requires.contains(&"prometheus"),
        "{requires:?}"
    );
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["uid"].is_string() && d["title"].is_string());

    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id: {panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for name in names {
                assert!(exported(name), "{title}: {name} is not exported by edgelb");
                used.insert(name.trim_end_matches("_bucket").to_string());
            }
            assert!(
                expr.matches('(').count() == expr.matches(')').count()
                    && expr.matches('{').count() == expr.matches('}').count(),
                "{title}: unbalanced {expr}"
            );
        }
    }
    let unused: Vec<&&str> = ALL.iter().filter(|m| !used.contains(**m)).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");
}

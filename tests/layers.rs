//! The module graph of `src/` runs one way: each module imports only modules below
//! it in [`LAYERS`] (README, "Architecture"). A new upward import, and so any
//! cycle, fails here with the file and the edge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// The crate's top-level modules, lowest first.
const LAYERS: &[&str] = &[
    // Unit-test helpers (cfg(test) only).
    "testing",
    // The shared vocabulary and leaf utilities.
    "config",
    "warn_every",
    "systemd",
    "proxy_protocol",
    "splice",
    "accept",
    "workers",
    // Pure parts and per-process counters.
    "scheduler",
    "persistence",
    "limit",
    "metrics",
    "access_log",
    "memory",
    // What the process knows of each listener and backend.
    "state",
    // One connection.
    "copy",
    "proxy",
    "listener",
    // The checks, the running set, the management side.
    "health",
    "server",
    "api",
    "admin",
    "process",
    "upgrade",
    "demo",
];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// `crate::x` paths in code (comments and unit-test modules left out).
fn imports(text: &str) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = rank(&module)
            .unwrap_or_else(|| panic!("module `{module}` is not in LAYERS (tests/layers.rs)"));
        let text = std::fs::read_to_string(file).unwrap();
        for target in imports(&text) {
            if target == module {
                continue;
            }
            match rank(&target) {
                Some(r) if r < own => {}
                _ => wrong.push(format!("{}: {module} -> {target}", file.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(LAYERS.contains(&name), "`{name}` is missing from LAYERS");
            assert!(
                lib.contains(&format!("[`{name}`]")),
                "lib.rs's layout list misses `{name}`"
            );
        }
    }
}

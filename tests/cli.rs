//! The command line: `check` exit codes and the error line format.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::Command;

fn edgelb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelb"))
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("edgelb-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn check_accepts_the_example_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/listener.toml");
    let (code, stdout, _) = edgelb(&["check", "--config", path]);
    assert_eq!(code, 0);
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn check_prints_every_error_as_file_line_column_code_message() {
    let src = "[[load_balancers]]\nid = \"lb\"\n[[listeners]]\nload_balancer_id = \"lb\"\nlistener_port = 70000\nscheduler = \"x\"\n";
    let path = temp_file("bad.toml", src);
    let p = path.to_str().unwrap();
    let (code, stdout, stderr) = edgelb(&["check", "--config", p]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{p}:5:17: InvalidListenerPort: The specified parameter ListenerPort is invalid: 70000 is not in 1..=65535"),
            format!("{p}:6:13: InvalidScheduler: The specified parameter Scheduler is invalid: \"x\" is not one of wrr, wlc, rr, sch, tch"),
        ]
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn check_of_a_non_toml_or_missing_file_exits_2() {
    let path = temp_file("garbage.toml", "this is { not toml\n");
    let p = path.to_str().unwrap();
    let (code, _, stderr) = edgelb(&["check", "--config", p]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with(&format!("{p}:1:")), "{stderr}");
    assert!(
        stderr.contains("InvalidParameter: not a valid TOML file"),
        "{stderr}"
    );
    std::fs::remove_file(path).unwrap();
    let (code, _, stderr) = edgelb(&["check", "--config", "/nonexistent/edgelb.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = edgelb(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("edgelb "), "{stdout}");
    let (code, stdout, _) = edgelb(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "demo"] {
        assert!(stdout.contains(word), "help lacks {word}: {stdout}");
    }
}

#[test]
fn check_reports_an_access_log_in_a_missing_directory_with_its_location() {
    let src = "[global]\naccess_log = \"/nonexistent-edgelb-logs/access.log\"\n";
    let path = temp_file("access.toml", src);
    let p = path.to_str().unwrap();
    let (code, _, stderr) = edgelb(&["check", "--config", p]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim_end(),
        format!("{p}:2:14: InvalidAccessLog: The specified parameter AccessLog is invalid: directory /nonexistent-edgelb-logs does not exist")
    );
    std::fs::remove_file(path).unwrap();
}

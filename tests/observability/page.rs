//! The status page as a person sees it: rendered by headless Chromium.

use crate::{config_for, lb_with_admin};
use edgelb::state::Health;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

use crate::support;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium, or `None` when `EDGELB_SKIP_BROWSER=1`; a missing browser is a failure
/// otherwise, so CI cannot pass without running this test.
fn browser() -> Option<&'static str> {
    if std::path::Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM);
    }
    if std::env::var("EDGELB_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("EDGELB_SKIP_BROWSER=1: not rendering the status page");
        return None;
    }
    panic!("{CHROMIUM} is missing: `apt-get install -y chromium`, or set EDGELB_SKIP_BROWSER=1 to skip");
}

/// The DOM of `url` after loading, as Chromium serializes it.
async fn dump_dom(chromium: &str, url: &str) -> String {
    chromium_run(chromium, &["--dump-dom", url]).await
}

/// Runs headless Chromium with `args`; its stdout.
async fn chromium_run(chromium: &str, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("edgelb-chromium-{}", std::process::id()));
    let mut chromium = std::process::Command::new(chromium);
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args);
    // Its zygote, renderers and utility processes are stopped with it, even on a hang.
    let output = daemon::output(&mut chromium, Duration::from_secs(90)).await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text of each `<tr>` with `class`, tags removed, cells separated by `|`.
fn rows(dom: &str, class: &str) -> Vec<String> {
    let open = format!("<tr class=\"{class}\">");
    dom.split(&open)
        .skip(1)
        .map(|rest| {
            let row = &rest[..rest.find("</tr>").unwrap()];
            let mut text = String::new();
            let mut in_tag = false;
            for c in row.replace("</td>", "|").chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_listeners_and_backend_health_in_a_browser() {
    let Some(chromium) = browser() else {
        return;
    };
    let backend = echo_backend().await;
    let other = refused_addr();
    // Probes never complete during the test: the test sets health.
    let frozen = health_frozen().await;
    let text = config_for(
        "lb-page",
        &[("b1", backend.addr, 100), ("b2", other, 50), ("<i>b3</i>", other, 10)],
        &format!("description = \"<script>document.title='pwned'</script>\"\n{frozen}"),
    ) + "[[listeners]]\nload_balancer_id = \"lb-page\"\nlistener_port = 81\nstatus = \"stopped\"\n";
    let (lb, admin, _process) = lb_with_admin(&text).await;
    let rt = lb.server.listeners()[0].clone();
    let states = rt.backend_states();
    states[0].set_health(Health::Healthy);
    states[1].set_health(Health::Unhealthy);
    let echoed = echo_through(lb.addr("lb-page", 80), &[7u8; 1000]).await;
    assert_eq!(echoed.len(), 1000);
    wait_until("connection closed", || {
        rt.active.load(Ordering::Relaxed) == 0
    })
    .await;

    let url = format!("http://{admin}/");
    // EDGELB_SCREENSHOT=/tmp/status.png: also save a picture, to look at the layout.
    if let Ok(png) = std::env::var("EDGELB_SCREENSHOT") {
        let shot = format!("--screenshot={png}");
        chromium_run(chromium, &[&shot, "--window-size=1200,800", &url]).await;
    }
    let dom = dump_dom(chromium, &url).await;
    assert!(
        dom.contains("<title>edgelb status</title>"),
        "script ran or page broken:\n{dom}"
    );
    assert!(
        dom.contains("http-equiv=\"refresh\" content=\"5\""),
        "{dom}"
    );
    // User strings are text, not markup.
    assert!(!dom.contains("<script>") && !dom.contains("<i>"), "{dom}");
    assert!(dom.contains("lb-page:80 — &lt;script&gt;"), "{dom}");

    let listeners = rows(&dom, "listener");
    assert_eq!(listeners.len(), 2, "{dom}");
    let bound = lb.addr("lb-page", 80);
    assert_eq!(
        listeners[0],
        format!(":80|127.0.0.1:80 (on {bound})|running|wrr|0|1|no|1000 B|1000 B|0|")
    );
    assert!(
        listeners[1].starts_with(":81|127.0.0.1:81|stopped|wrr|0|0|"),
        "{}",
        listeners[1]
    );

    // Both listeners of lb-page list its three backends; :80's come first.
    let backends = rows(&dom, "backend");
    assert_eq!(backends.len(), 6, "{dom}");
    let cells: Vec<Vec<&str>> = backends.iter().map(|r| r.split('|').collect()).collect();
    let b1 = backend.addr.to_string();
    let other = other.to_string();
    assert_eq!(
        cells[0][..8],
        ["b1", &b1, "healthy", "100", "0", "1", "0", "1000 B"]
    );
    assert_eq!(cells[1][..4], ["b2", &other, "unhealthy", "50"]);
    assert_eq!(cells[2][..4], ["<i>b3</i>", &other, "unknown", "10"]);
    assert!(
        cells[0][9].ends_with('s'),
        "since last change: {:?}",
        cells[0]
    );
    // Health is a colour as well as a word.
    for health in ["healthy", "unhealthy", "unknown"] {
        assert!(
            dom.contains(&format!("class=\"health {health}\">{health}<")),
            "{dom}"
        );
        assert!(
            dom.contains(&format!(".{health}{{background:")),
            "no colour for {health}"
        );
    }
}

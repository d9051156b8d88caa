//! The fleet's programs, from the files shipped in config/: BIRD and the flow
//! stickiness on the router; edgelb, BIRD and edgelb-bgp-watch on each node. Each
//! runs through `ip netns exec` under a `Daemon` guard (stopped by pid).

use crate::net::{self, node_ns, router_if, ROUTER, VIP};
use crate::support::daemon::Daemon;
use crate::support::process::{Edgelb, Options};
use crate::support::temp_dir;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The nodes' listener file: one load balancer on the VIP, four backends, `sch`.
pub fn listener_file() -> String {
    let mut text = format!(
        "[global]\nhash_seed = \"fleet\"\ndrain_delay = 5\ndrain_timeout = 30\n\
         [admin]\naddress = \"127.0.0.1:9900\"\n\
         [[load_balancers]]\nid = \"lb-fleet\"\naddress = \"{VIP}\"\n"
    );
    for b in 1..=net::BACKENDS {
        text += &format!(
            "[[load_balancers.backend_servers]]\nserver_id = \"backend-{b}\"\nip = \"{}\"\nport = 8000\n",
            net::backend_addr(b)
        );
    }
    text + "[[listeners]]\nload_balancer_id = \"lb-fleet\"\nlistener_port = 80\nscheduler = \"sch\"\n"
}

/// A file of config/ with its `define NAME = ...` lines set to `values` (each must
/// be there), `end` closing each (";" for BIRD), logging to stderr.
fn shipped(file: &str, values: &[(&str, String)], end: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (name, value) in values {
        let start = format!("define {name} = ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("{file} has no `{start}` line"))
            .to_string();
        text = text.replace(&line, &format!("{start}{value}{end}"));
    }
    text.replace("log syslog all;", "log stderr all;")
}

/// Fails with what to install when `program` is missing (scripts/test.sh installs it).
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "the fleet test needs `{program}` (Debian package {package}): \
         run `bash scripts/test.sh`, which installs it, or `apt-get install {package}`"
    );
}

/// BIRD in namespace `ns` on `conf`, its control socket and log in `dir`; returns
/// once the socket answers.
fn start_bird(ns: &str, dir: &Path, conf: String) -> Daemon {
    let conf_path = dir.join("bird.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let socket = dir.join("bird.ctl");
    let log = std::fs::File::create(dir.join("bird.log")).unwrap();
    let mut bird = Daemon::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(&conf_path)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = bird.try_wait() {
            panic!(
                "bird in {ns} exited with {status}: {}",
                read(&dir.join("bird.log"))
            );
        }
        assert!(
            Instant::now() < deadline,
            "bird in {ns} never opened {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bird
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The router: BIRD from config/bird-router.conf, one multipath route into its
/// kernel; flow stickiness from config/fleet-router.nft with one table per node.
pub struct Router {
    pub dir: PathBuf,
    bird: Option<Daemon>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.bird.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Router {
    pub fn start() -> Router {
        let dir = temp_dir("fleet-router");
        let mut values = vec![
            ("ROUTER_ID", "10.88.1.1".to_string()),
            ("VIP", format!("{VIP}/32")),
        ];
        let names = ["NODE1", "NODE2", "NODE3"];
        for (n, name) in (1..=net::NODES).zip(names) {
            values.push((name, net::node_addr(n).to_string()));
        }
        let bird = start_bird(ROUTER, &dir, shipped("bird-router.conf", &values, ";"));

        let mut values = vec![("VIP", VIP.to_string())];
        let ifs = ["NODE1_IF", "NODE2_IF", "NODE3_IF"];
        for (n, name) in (1..=net::NODES).zip(ifs) {
            values.push((name, format!("\"{}\"", router_if(n))));
        }
        let nft = dir.join("sticky.nft");
        std::fs::write(&nft, shipped("fleet-router.nft", &values, "")).unwrap();
        net::run(
            Command::new("ip")
                .args(["netns", "exec", ROUTER, "nft", "-f"])
                .arg(&nft),
        );
        for n in 1..=net::NODES {
            let table = (100 + n).to_string();
            let mark = n.to_string();
            let via = net::node_addr(n).to_string();
            let vip = format!("{VIP}/32");
            net::run(
                Command::new("ip")
                    .args(["-n", ROUTER, "rule", "add", "fwmark", &mark])
                    .args(["lookup", &table, "priority", "100"]),
            );
            net::run(Command::new("ip").args([
                "-n", ROUTER, "route", "add", &vip, "via", &via, "table", &table,
            ]));
        }
        Router {
            dir,
            bird: Some(bird),
        }
    }
}

/// One node: edgelb (the real binary), its BIRD from config/bird-node.conf and the
/// watcher config/edgelb-bgp-watch. Fields drop in order: watcher, edgelb, BIRD.
pub struct Node {
    pub n: usize,
    pub ns: String,
    pub dir: PathBuf,
    pub watch: Option<Daemon>,
    pub edgelb: Option<Edgelb>,
    pub bird: Option<Daemon>,
}

impl Node {
    /// Starts BIRD, then edgelb, then the watcher (the systemd order).
    pub fn start(n: usize) -> Node {
        let mut node = Node {
            n,
            ns: node_ns(n),
            dir: temp_dir(&format!("fleet-node{n}")),
            watch: None,
            edgelb: None,
            bird: None,
        };
        node.start_bird();
        node.start_edgelb();
        node.start_watch();
        node
    }

    /// A node in namespace `ns` with only its watcher running (no BIRD yet).
    pub fn lone(ns: &str) -> Node {
        let mut node = Node {
            n: 0,
            ns: ns.to_string(),
            dir: temp_dir("fleet-lone"),
            watch: None,
            edgelb: None,
            bird: None,
        };
        node.start_watch();
        node
    }

    pub fn start_bird(&mut self) {
        self.start_bird_towards(net::router_addr(self.n), net::node_addr(self.n));
    }

    /// BIRD from config/bird-node.conf with `router` as its BGP peer.
    pub fn start_bird_towards(&mut self, router: Ipv4Addr, id: Ipv4Addr) {
        let values = [
            ("ROUTER_ID", id.to_string()),
            ("ROUTER", router.to_string()),
            ("VIP", format!("{VIP}/32")),
        ];
        let conf = shipped("bird-node.conf", &values, ";");
        self.bird = Some(start_bird(&self.ns, &self.dir, conf));
    }

    pub fn start_edgelb(&mut self) {
        let options = Options {
            netns: Some(self.ns.clone()),
            ..Options::default()
        };
        self.edgelb = Some(Edgelb::start(&listener_file(), options));
    }

    pub fn start_watch(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/edgelb-bgp-watch");
        let log = std::fs::File::create(self.watch_log()).unwrap();
        self.watch = Some(Daemon::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(script)
                .arg("--socket")
                .arg(self.dir.join("bird.ctl"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        ));
    }

    pub fn watch_log(&self) -> PathBuf {
        self.dir.join("watch.log")
    }

    pub fn edgelb(&mut self) -> &mut Edgelb {
        self.edgelb.as_mut().expect("edgelb runs")
    }

    /// What went on, for a failing assertion.
    pub fn logs(&self) -> String {
        format!(
            "--- node {} edgelb:\n{}\n--- bird:\n{}\n--- watcher:\n{}",
            self.n,
            self.edgelb
                .as_ref()
                .map(|e| e.log_text())
                .unwrap_or_default(),
            read(&self.dir.join("bird.log")),
            read(&self.watch_log())
        )
    }

    /// The whole node dies as a powered-off host would: first every packet in or
    /// out of it is dropped (so not even a FIN or a reset gets out), then edgelb,
    /// BIRD and the watcher are killed (SIGKILL, by pid). Only BFD can tell.
    pub fn crash(&mut self) {
        net::run(Command::new("ip").args(["netns", "exec", &self.ns, "nft", CRASH]));
        for daemon in [self.watch.as_ref(), self.bird.as_ref()]
            .into_iter()
            .flatten()
        {
            daemon.signal(libc::SIGKILL);
        }
        self.edgelb().signal(libc::SIGKILL);
        self.watch = None;
        self.edgelb = None;
        self.bird = None;
    }

    /// Powered on again: the packets flow, and the node starts as at first.
    pub fn recover(&mut self) {
        net::run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "nft",
            "delete table inet crash",
        ]));
        self.start_bird();
        self.start_edgelb();
        self.start_watch();
    }
}

const CRASH: &str = "add table inet crash; \
    add chain inet crash in { type filter hook input priority -400; policy drop; }; \
    add chain inet crash out { type filter hook output priority -400; policy drop; }";

impl Drop for Node {
    fn drop(&mut self) {
        // drain_delay = 5 would hold each SIGTERM-ed node 5 s: the drain is tested,
        // here the node only has to go.
        if let Some(edgelb) = self.edgelb.as_mut() {
            if edgelb.is_running() {
                edgelb.signal(libc::SIGKILL);
            }
        }
        self.watch.take();
        self.edgelb.take();
        self.bird.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The fleet's network: namespaces (client, router, three nodes, backends) joined by
//! veth links, with their addresses and routes; leftovers of a killed earlier run
//! removed first, everything removed on drop. Addresses exist only inside them.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// The load balancer's address, on `lo` of every node.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 88, 100, 1);
pub const CLIENTS: usize = 64;
pub const NODES: usize = 3;
pub const BACKENDS: usize = 4;

pub const CLIENT: &str = "elbf-client";
pub const ROUTER: &str = "elbf-router";
pub const BACKEND: &str = "elbf-backend";

/// Node `n` (1..=3)'s namespace.
pub fn node_ns(n: usize) -> String {
    format!("elbf-node{n}")
}

/// Client `i` (0..64): 10.88.1.10 and up, all on the client namespace's one link.
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 1, 10 + i as u8)
}

/// Node `n`'s address on its link to the router (10.88.1n.2): backends see it as
/// the peer, which is how the test knows which node served a connection.
pub fn node_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 10 + n as u8, 2)
}

/// The router's address on node `n`'s link.
pub fn router_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 10 + n as u8, 1)
}

/// The router's interface towards node `n`.
pub fn router_if(n: usize) -> String {
    format!("to-node{n}")
}

/// Backend `b` (1..=4).
pub fn backend_addr(b: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 20, 10 + b as u8)
}

/// Which node has `ip` as its link address.
pub fn node_of(ip: Ipv4Addr) -> Option<usize> {
    (1..=NODES).find(|&n| node_addr(n) == ip)
}

/// Runs `cmd`; panics with its stderr when it fails. Its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n NS -batch -` (or in our own namespace): one process for many commands.
fn ip_batch(ns: Option<&str>, script: &str) {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -batch in {ns:?} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into namespace `ns`: sockets it creates from then on
/// live there (a socket keeps the namespace it was created in).
pub fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A runtime whose threads all live in namespace `ns`: what it spawns connects
/// and listens from there.
pub fn runtime_in(ns: &str, threads: usize) -> tokio::runtime::Runtime {
    let ns = ns.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .on_thread_start(move || enter(&ns))
        .build()
        .unwrap()
}

/// Writes `value` to `/proc/sys/<key>` of namespace `ns` (from a thread inside it).
pub fn sysctl(ns: &str, key: &str, value: &str) {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{ns}: {path}: {e}"));
        });
    });
}

/// The right to a set of namespace names, across processes: two runs at once (two
/// checkouts testing on one machine) would take each other's namespaces for
/// leftovers. A killed run's lock goes with it, so what is left over once the
/// lock is ours is from a dead run.
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub fn take(tag: &str) -> Lock {
        let path = std::env::temp_dir().join(format!("elbf-{tag}.lock"));
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        // SAFETY: flock on a descriptor we own.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !free {
            eprintln!("fleet: another run holds {path:?}; waiting for it to end");
            // SAFETY: as above; blocks until the other run ends.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "flock {path:?}: {}", std::io::Error::last_os_error());
        }
        Lock { _file: file }
    }
}

/// Namespaces that exist while this lives; removed on drop.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `names` with `lo` up, after removing any of them left over from a
    /// killed earlier run (said on stderr, with the processes stopped in it).
    pub fn create(names: &[String]) -> Namespaces {
        let mut made = Namespaces { names: Vec::new() };
        for name in names {
            remove_leftover(name);
            run(Command::new("ip").args(["netns", "add", name]));
            made.names.push(name.clone());
            ip_batch(Some(name), "link set lo up\n");
        }
        made
    }
}

impl Namespaces {
    /// Panics if a process is still in one of them, waiting up to 2 s (SIGKILL is
    /// delivered, not awaited): what the test started must have been stopped.
    pub fn assert_empty(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for name in &self.names {
            loop {
                let pids = run(Command::new("ip").args(["netns", "pids", name]));
                if pids.trim().is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "still running in {name}: {pids}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes namespace `name` if it exists, stopping (by pid) the processes still in
/// it; what it found, for the test to print and check.
pub fn remove_leftover(name: &str) -> Option<String> {
    if !Path::new("/run/netns").join(name).exists() {
        return None;
    }
    let pids: Vec<i32> = run(Command::new("ip").args(["netns", "pids", name]))
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let message = format!(
        "fleet: namespace {name} is left over from an earlier run that was killed: \
         removing it, after stopping the processes still in it {pids:?}"
    );
    eprintln!("{message}");
    for pid in &pids {
        // SAFETY: kill only sends a signal; these pids are in our test namespace.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    run(Command::new("ip").args(["netns", "del", name]));
    Some(message)
}

/// The fleet's namespaces, links, addresses and routes (README, "Fleet").
pub fn build() -> Namespaces {
    let mut names: Vec<String> = [CLIENT, ROUTER, BACKEND].map(String::from).to_vec();
    names.extend((1..=NODES).map(node_ns));
    let spaces = Namespaces::create(&names);

    // The links, made straight inside the namespaces: nothing lands in ours.
    let mut links = format!(
        "link add to-router netns {CLIENT} type veth peer name to-clients netns {ROUTER}\n\
         link add to-router netns {BACKEND} type veth peer name to-backends netns {ROUTER}\n"
    );
    for n in 1..=NODES {
        links += &format!(
            "link add to-router netns {} type veth peer name {} netns {ROUTER}\n",
            node_ns(n),
            router_if(n)
        );
    }
    ip_batch(None, &links);

    let mut router = "addr add 10.88.1.1/24 dev to-clients\nlink set to-clients up\n\
                      addr add 10.88.20.1/24 dev to-backends\nlink set to-backends up\n"
        .to_string();
    for n in 1..=NODES {
        let dev = router_if(n);
        router += &format!(
            "addr add {}/24 dev {dev}\nlink set {dev} up\n",
            router_addr(n)
        );
        ip_batch(
            Some(&node_ns(n)),
            &format!(
                "addr add {}/24 dev to-router\nlink set to-router up\n\
                 addr add {VIP}/32 dev lo\nroute add default via {}\n",
                node_addr(n),
                router_addr(n)
            ),
        );
    }
    ip_batch(Some(ROUTER), &router);
    let mut clients: String = (0..CLIENTS)
        .map(|i| format!("addr add {}/24 dev to-router\n", client_addr(i)))
        .collect();
    clients += "link set to-router up\nroute add default via 10.88.1.1\n";
    ip_batch(Some(CLIENT), &clients);
    let mut backends: String = (1..=BACKENDS)
        .map(|b| format!("addr add {}/24 dev to-router\n", backend_addr(b)))
        .collect();
    backends += "link set to-router up\nroute add default via 10.88.20.1\n";
    ip_batch(Some(BACKEND), &backends);
    sysctl(ROUTER, "net.ipv4.ip_forward", "1");
    spaces
}

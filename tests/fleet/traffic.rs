//! What goes through the fleet: backends that say their name and the peer they see
//! (the node's address), clients that connect from chosen addresses and record
//! which node and backend served them, and the router's route watched over time.

use crate::net::{self, VIP};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;

/// A connection that takes longer than this to be served counts as failed.
pub const SERVED_WITHIN: Duration = Duration::from_secs(3);
pub const BACKEND_PORT: u16 = 8000;

/// Binds the backends (on a runtime living in the backend namespace) and serves
/// them: each connection gets "backend-N PEER\n", then its bytes echoed to EOF.
pub async fn serve_backends() {
    for b in 1..=net::BACKENDS {
        let addr = SocketAddr::from((net::backend_addr(b), BACKEND_PORT));
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(backend_connection(
                    stream,
                    format!("backend-{b} {}\n", peer.ip()),
                ));
            }
        });
    }
}

async fn backend_connection(mut stream: TcpStream, hello: String) {
    // Health probes connect and leave at once: their errors mean nothing.
    if stream.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Who served a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub node: usize,
    pub backend: String,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub start: Instant,
    pub took: Duration,
    pub outcome: Result<Served, String>,
}

/// Connects to the VIP from client `client` and reads who served it; the stream
/// stays open. Must run on the client namespace's runtime.
pub async fn open(client: usize) -> Result<(TcpStream, Served), String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        let source = SocketAddr::new(IpAddr::V4(net::client_addr(client)), 0);
        socket
            .bind(source)
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = BufReader::new(
            socket
                .connect(SocketAddr::from((VIP, 80)))
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let served = parse_hello(&line)?;
        Ok((stream.into_inner(), served))
    };
    tokio::time::timeout(SERVED_WITHIN, attempt)
        .await
        .map_err(|_| format!("not served within {SERVED_WITHIN:?}"))?
}

fn parse_hello(line: &str) -> Result<Served, String> {
    let (backend, peer) = line
        .trim_end()
        .split_once(' ')
        .ok_or_else(|| format!("closed before the backend spoke (got {line:?})"))?;
    let peer: Ipv4Addr = peer.parse().map_err(|_| format!("bad hello {line:?}"))?;
    let node = net::node_of(peer).ok_or_else(|| format!("backend saw {peer}, not a node"))?;
    Ok(Served {
        node,
        backend: backend.to_string(),
    })
}

/// One short connection: served, then an echo round trip, then a clean close.
pub async fn once(client: usize) -> Record {
    let start = Instant::now();
    let outcome = async {
        let (mut stream, served) = open(client).await?;
        round_trip(&mut stream, b"ping\n").await?;
        finish(&mut stream).await?;
        Ok(served)
    }
    .await;
    Record {
        client,
        start,
        took: start.elapsed(),
        outcome,
    }
}

pub async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    let echoed = async {
        stream.write_all(bytes).await?;
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(SERVED_WITHIN, echoed).await {
        Ok(Ok(back)) if back == bytes => Ok(()),
        Ok(Ok(back)) => Err(format!("echo was {back:?}")),
        Ok(Err(e)) => Err(format!("echo: {e}")),
        Err(_) => Err("echo timed out".into()),
    }
}

/// Half-closes and expects the far side to close cleanly, with nothing more.
pub async fn finish(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    match tokio::time::timeout(SERVED_WITHIN, stream.read_to_end(&mut rest)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => Err(format!("{n} bytes after the echo")),
        Ok(Err(e)) => Err(format!("close: {e}")),
        Err(_) => Err("no close".into()),
    }
}

/// Every client address connects `rounds` times, all clients at once.
pub async fn rounds(client_rt: &Handle, rounds: usize) -> Vec<Record> {
    let tasks: Vec<_> = (0..net::CLIENTS)
        .map(|c| {
            client_rt.spawn(async move {
                let mut records = Vec::new();
                for _ in 0..rounds {
                    records.push(once(c).await);
                }
                records
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Clients opening a connection every `every` until stopped, each from the next
/// client address, without waiting for the ones before (a connection stuck in a
/// failover does not hold back the next ones).
pub struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    ticker: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl Load {
    pub fn start(client_rt: &Handle, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), records.clone());
        let ticker = client_rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut tasks = Vec::new();
            let mut c = 0;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let r = r.clone();
                tasks.push(tokio::spawn(async move {
                    let record = once(c % net::CLIENTS).await;
                    r.lock().unwrap().push(record);
                }));
                c += 1;
            }
            tasks
        });
        Load {
            stop,
            records,
            ticker,
        }
    }

    /// How many connections were recorded so far.
    pub fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.ticker.await.unwrap() {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.records.lock().unwrap())
    }
}

/// A change of the route: the look that saw it started at `asked` and ended at
/// `seen` (also as wall clock, to compare with edgelb's log lines). The change
/// came before `seen`; `asked` is close to it, unless starting `ip` was slow.
#[derive(Clone)]
pub struct RouteChange {
    pub asked: Instant,
    pub seen: Instant,
    pub seen_wall: SystemTime,
    pub nodes: BTreeSet<usize>,
}

/// The router's multipath route to the VIP, looked at every 20 ms from a thread:
/// each change with its time (wall clock, to compare with edgelb's log lines).
pub struct RouteWatch {
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<RouteChange>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouteWatch {
    pub fn start() -> RouteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), changes.clone());
        let thread = std::thread::spawn(move || {
            let mut last = None;
            while !s.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let nodes = route_nodes();
                if last.as_ref() != Some(&nodes) {
                    c.lock().unwrap().push(RouteChange {
                        asked,
                        seen: Instant::now(),
                        seen_wall: SystemTime::now(),
                        nodes: nodes.clone(),
                    });
                    last = Some(nodes);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RouteWatch {
            stop,
            changes,
            thread: Some(thread),
        }
    }

    /// Every change so far, as (time since `origin`, nodes): for failure messages.
    pub fn history(&self, origin: Instant) -> Vec<(Duration, BTreeSet<usize>)> {
        let changes = self.changes.lock().unwrap();
        changes
            .iter()
            .map(|c| (c.asked.saturating_duration_since(origin), c.nodes.clone()))
            .collect()
    }

    /// The route's nodes now.
    pub fn now(&self) -> BTreeSet<usize> {
        self.changes
            .lock()
            .unwrap()
            .last()
            .map(|c| c.nodes.clone())
            .unwrap_or_default()
    }

    /// The first change seen after `since` whose nodes satisfy `cond`.
    pub fn first_after(
        &self,
        since: Instant,
        cond: impl Fn(&BTreeSet<usize>) -> bool,
    ) -> Option<RouteChange> {
        let changes = self.changes.lock().unwrap();
        changes
            .iter()
            .find(|c| c.seen >= since && cond(&c.nodes))
            .cloned()
    }

    /// Waits up to `within` for the route to be exactly `nodes`; whether it came.
    pub async fn wait_for(&self, nodes: &[usize], within: Duration) -> bool {
        let want: BTreeSet<usize> = nodes.iter().copied().collect();
        let deadline = Instant::now() + within;
        while self.now() != want {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The nodes the router's route to the VIP leads to now (`ip route`: one next hop
/// per node, each "dev to-nodeN").
pub fn route_nodes() -> BTreeSet<usize> {
    let vip = format!("{VIP}/32");
    let out = net::run(std::process::Command::new("ip").args([
        "-n",
        net::ROUTER,
        "-4",
        "route",
        "show",
        &vip,
    ]));
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "dev")
        .filter_map(|w| (1..=net::NODES).find(|&n| w[1] == net::router_if(n)))
        .collect()
}

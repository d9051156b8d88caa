//! The clients of the upgrade tests: continuous short connections that count every
//! failure by kind, and long-lived streams that carry seeded bytes both ways and
//! check every byte that comes back.

use crate::support::{random_bytes, REPLY_WITHIN};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the short clients saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicUsize,
    pub refused: AtomicUsize,
    pub reset: AtomicUsize,
    /// Bytes lost or changed, or any other error, each described.
    pub other: Mutex<Vec<String>>,
}

impl Tally {
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Panics unless every connection succeeded (and there were some).
    pub fn assert_clean(&self, at_least: usize) {
        let other = self.other.lock().unwrap();
        let (refused, reset) = (
            self.refused.load(Ordering::SeqCst),
            self.reset.load(Ordering::SeqCst),
        );
        assert!(
            refused == 0 && reset == 0 && other.is_empty(),
            "{refused} refused, {reset} reset, other: {other:?}"
        );
        assert!(self.ok() >= at_least, "only {} connections", self.ok());
    }

    fn count(&self, e: &std::io::Error, what: &str) {
        match e.kind() {
            ErrorKind::ConnectionRefused => self.refused.fetch_add(1, Ordering::SeqCst),
            ErrorKind::ConnectionReset => self.reset.fetch_add(1, Ordering::SeqCst),
            _ => {
                self.other.lock().unwrap().push(format!("{what}: {e}"));
                0
            }
        };
    }
}

/// Short connections to `addr`, one after another until `stop`: each reads the
/// backend's name, sends 4 KiB and half-closes, and must get exactly those bytes
/// back.
pub fn short_client(
    addr: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let payload = random_bytes(4096, seed * 1_000_003 + n);
            match tokio::time::timeout(REPLY_WITHIN, exchange(addr, &payload)).await {
                Ok(Ok(back)) if back == payload => {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Ok(back)) => tally.other.lock().unwrap().push(format!(
                    "{} of {} bytes came back, or changed",
                    back.len(),
                    payload.len()
                )),
                Ok(Err((e, what))) => tally.count(&e, what),
                Err(_) => tally.other.lock().unwrap().push("no reply".into()),
            }
        }
    })
}

async fn exchange(
    addr: SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>, (std::io::Error, &'static str)> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| (e, "connect"))?;
    let mut name = [0u8; 1];
    stream
        .read_exact(&mut name)
        .await
        .map_err(|e| (e, "name"))?;
    let (mut r, mut w) = stream.split();
    let send = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(payload.len());
    let (sent, read) = tokio::join!(send, r.read_to_end(&mut back));
    sent.map_err(|e| (e, "send"))?;
    read.map_err(|e| (e, "receive"))?;
    Ok(back)
}

/// A long-lived connection through the balancer: [`LongStream::rounds`] sends
/// 16 KiB chunks of seeded bytes and checks each comes back whole;
/// [`LongStream::finish`] half-closes and checks the totals both ways.
pub struct LongStream {
    rounds: mpsc::Sender<(usize, tokio::sync::oneshot::Sender<()>)>,
    task: JoinHandle<(usize, usize)>,
    /// The backend's name, read first.
    pub backend: u8,
}

const CHUNK: usize = 16 * 1024;

impl LongStream {
    pub async fn open(addr: SocketAddr, seed: u64) -> LongStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut name = [0u8; 1];
        stream.read_exact(&mut name).await.unwrap();
        let (rounds, mut orders) = mpsc::channel::<(usize, tokio::sync::oneshot::Sender<()>)>(1);
        let task = tokio::spawn(async move {
            let (mut sent, mut received) = (0usize, 0usize);
            let mut chunk_no = 0u64;
            while let Some((n, done)) = orders.recv().await {
                for _ in 0..n {
                    chunk_no += 1;
                    let bytes = random_bytes(CHUNK, seed * 7_919 + chunk_no);
                    stream.write_all(&bytes).await.unwrap();
                    sent += bytes.len();
                    let mut back = vec![0u8; CHUNK];
                    tokio::time::timeout(REPLY_WITHIN, stream.read_exact(&mut back))
                        .await
                        .expect("echo within the limit")
                        .expect("the stream survives");
                    assert!(back == bytes, "chunk {chunk_no} of stream {seed} changed");
                    received += back.len();
                }
                let _ = done.send(());
            }
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{} bytes after the last echo", rest.len());
            (sent, received)
        });
        LongStream {
            rounds,
            task,
            backend: name[0],
        }
    }

    /// `n` chunks there and back.
    pub async fn rounds(&self, n: usize) {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.rounds.send((n, done)).await.unwrap();
        finished.await.expect("the stream task ended early");
    }

    /// Ends the stream; returns (bytes sent, bytes received), which must agree.
    pub async fn finish(self) -> (usize, usize) {
        drop(self.rounds);
        tokio::time::timeout(REPLY_WITHIN, self.task)
            .await
            .expect("the stream ends")
            .expect("the stream task")
    }
}

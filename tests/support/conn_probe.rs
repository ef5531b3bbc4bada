//! A loopback TCP relay placed in front of a test server. It notices when the client hangs up
//! while a request is still waiting for its answer (the client dropped its HTTP call), and can
//! hold back the first byte of every answer to simulate a distant provider's latency.
//!
//! ```ignore
//! #[path = "support/conn_probe.rs"]
//! mod conn_probe;
//! let probe = conn_probe::ConnProbe::start(fake.addr()).await;
//! let cfg = fake.openai_config().with_base_url(probe.url());
//! // ... the client gives up on a slow call ...
//! assert_eq!(probe.abandoned(), 1);
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    open: AtomicUsize,
    abandoned: AtomicUsize,
    answers: AtomicUsize,
}

/// Extra latency before the first byte of each answer: uniform in `[min, max]`, from a fixed
/// pseudo-random sequence (runs are repeatable).
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    /// Shortest delay.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Delay {
    fn pick(&self, n: usize) -> Duration {
        // splitmix64 of the answer's ordinal.
        let mut z = (n as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let span = self.max.saturating_sub(self.min).as_micros() as u64;
        self.min + Duration::from_micros(if span == 0 { 0 } else { z % (span + 1) })
    }
}

/// A running relay. Stops accepting connections when dropped.
pub struct ConnProbe {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnProbe {
    /// Starts relaying a free port of 127.0.0.1 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> ConnProbe {
        ConnProbe::start_delayed(upstream, None).await
    }

    /// Like [`ConnProbe::start`], holding back the first byte of each answer by `delay`.
    pub async fn start_delayed(upstream: SocketAddr, delay: Option<Delay>) -> ConnProbe {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind probe");
        let addr = listener.local_addr().expect("probe addr");
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    c.connections.fetch_add(1, Ordering::SeqCst);
                    c.open.fetch_add(1, Ordering::SeqCst);
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &c, delay).await;
                    }
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        ConnProbe {
            addr,
            counters,
            task,
        }
    }

    /// The base URL to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections the client closed while its last request had not received a single byte
    /// of answer yet.
    pub fn abandoned(&self) -> usize {
        self.counters.abandoned.load(Ordering::SeqCst)
    }
}

/// Copies both ways until either side closes. When the client closes first while it has sent
/// bytes the server has not answered yet, the call was abandoned.
async fn relay(client: TcpStream, server: TcpStream, c: &Counters, delay: Option<Delay>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // True from the moment the client sends until the server sends anything back.
    let waiting = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    if waiting.load(Ordering::SeqCst) {
                        c.abandoned.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(n) => {
                    waiting.store(true, Ordering::SeqCst);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if waiting.load(Ordering::SeqCst) {
                        // The first byte of an answer (still unanswered while delayed).
                        let nth = c.answers.fetch_add(1, Ordering::SeqCst);
                        if let Some(d) = delay {
                            tokio::time::sleep(d.pick(nth)).await;
                        }
                        waiting.store(false, Ordering::SeqCst);
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Whichever side closes first ends the connection (both halves are dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

//! A seeded UDP impairment proxy for tests (`protocol.md` §9): it sits between a client and a
//! relay on loopback and applies delay, jitter, loss, reordering, duplication, an MTU limit and
//! blackouts to every datagram, reproducibly from a seed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What the proxy does to datagrams (each direction independently, same settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra uniformly random delay in `0..=jitter`.
    pub jitter: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is held back by an extra `reorder_delay` (so later ones
    /// overtake it).
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Datagrams larger than this are dropped (a path MTU; [`Proxy::set_mtu`] changes it while
    /// the proxy runs, as a route change into a smaller MTU would: a black hole).
    pub mtu: usize,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            duplicate: 0.0,
            mtu: 65_535,
        }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams received from either side.
    pub seen: AtomicU64,
    /// Dropped (loss, MTU or blackout).
    pub dropped: AtomicU64,
    /// Of those, dropped for being larger than the MTU.
    pub too_large: AtomicU64,
    /// Held back for reordering.
    pub reordered: AtomicU64,
    /// Duplicated.
    pub duplicated: AtomicU64,
}

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    blackout: Arc<AtomicBool>,
    mtu: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 that forwards to `upstream`. The first peer to send to it is
    /// the client; everything from `upstream` goes back to that client.
    pub async fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> std::io::Result<Proxy> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(upstream).await?;
        let addr = front.local_addr()?;
        let blackout = Arc::new(AtomicBool::new(false));
        let mtu = Arc::new(AtomicUsize::new(imp.mtu));
        let counters = Arc::new(Counters::default());
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (front, back, imp, bo, m, c, rng, client) = (
                front.clone(),
                back.clone(),
                imp.clone(),
                blackout.clone(),
                mtu.clone(),
                counters.clone(),
                rng.clone(),
                client.clone(),
            );
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().await = Some(from);
                    let data = buf[..n].to_vec();
                    let back = back.clone();
                    forward(&imp, &bo, &m, &c, &rng, data, move |d| {
                        let back = back.clone();
                        async move {
                            let _ = back.send(&d).await;
                        }
                    })
                    .await;
                }
            }
        };
        let down = {
            let (front, back, bo, m, c, client) = (
                front.clone(),
                back.clone(),
                blackout.clone(),
                mtu.clone(),
                counters.clone(),
                client.clone(),
            );
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    let Some(to) = *client.lock().await else {
                        continue;
                    };
                    let data = buf[..n].to_vec();
                    let front = front.clone();
                    forward(&imp, &bo, &m, &c, &rng, data, move |d| {
                        let front = front.clone();
                        async move {
                            let _ = front.send_to(&d, to).await;
                        }
                    })
                    .await;
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::join!(up, down);
        });
        Ok(Proxy {
            addr,
            blackout,
            mtu,
            counters,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops everything in both directions while `on`.
    pub fn set_blackout(&self, on: bool) {
        self.blackout.store(on, Ordering::SeqCst);
    }

    /// Drops, from now on, datagrams larger than `mtu` bytes in both directions.
    pub fn set_mtu(&self, mtu: usize) {
        self.mtu.store(mtu, Ordering::SeqCst);
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

async fn forward<F, Fut>(
    imp: &Impairment,
    blackout: &AtomicBool,
    mtu: &AtomicUsize,
    c: &Counters,
    rng: &Mutex<ChaCha8Rng>,
    data: Vec<u8>,
    send: F,
) where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    c.seen.fetch_add(1, Ordering::Relaxed);
    let too_large = data.len() > mtu.load(Ordering::SeqCst);
    if blackout.load(Ordering::SeqCst) || too_large {
        c.dropped.fetch_add(1, Ordering::Relaxed);
        if too_large {
            c.too_large.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let (drop, copies, delay) = {
        let mut r = rng.lock().await;
        let drop = r.gen_bool(imp.loss);
        let copies = if r.gen_bool(imp.duplicate) { 2 } else { 1 };
        let mut delay = imp.delay;
        if !imp.jitter.is_zero() {
            delay += imp.jitter.mul_f64(r.gen_range(0.0..=1.0));
        }
        if r.gen_bool(imp.reorder) {
            delay += imp.reorder_delay;
            c.reordered.fetch_add(1, Ordering::Relaxed);
        }
        (drop, copies, delay)
    };
    if drop {
        c.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if copies == 2 {
        c.duplicated.fetch_add(1, Ordering::Relaxed);
    }
    let send = Arc::new(send);
    for _ in 0..copies {
        let (d, send) = (data.clone(), send.clone());
        if delay.is_zero() {
            send(d).await;
        } else {
            let at = Instant::now() + delay;
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                send(d).await;
            });
        }
    }
}

//! How the HTTP server (`server.rs`'s router) is served: the accept loop and its bounds.
//! axum's own `serve` accepted every connection and kept each as long as the client
//! liked: 10,000 idle connections held every descriptor of a daemon under `ulimit -n
//! 1024`, so `/healthz` timed out and webhooks failed with "too many open files".
//!
//! Here every connection counts against `server.max_connections`, lowered at start to
//! half the descriptor limit so that the store, the API client and the sinks always keep
//! the other half ([`Limits::fit_descriptors`]). A full server makes room by closing the
//! connection that has been quiet longest without a request in flight (an idle or
//! half-sent one: a real client sends its request at once, so it is never the quietest);
//! when every connection is busy with a request, a new one is closed at once. A request's
//! headers must arrive within `server.header_read_timeout` of the connection's start (or
//! of the previous response, on a kept-alive one), and a connection that moves no byte
//! for `server.idle_timeout` with no request in flight is closed.
//!
//! Each connection is a task owned by the accept loop (a `JoinSet`): they end with it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// The bounds of the server's connections (`[server]`, docs/configuration.md).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// How long open requests get to finish when the server stops.
const DRAIN: Duration = Duration::from_secs(1);

/// At most one log line per this long about a full server or a failing accept.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Limits {
    /// Raise the soft descriptor limit to the hard one (as Go's runtime does: the soft
    /// default of 1024 is a relic of `select`), then lower `max_connections` to half of
    /// what it allows, so that inbound connections can never take the descriptors the
    /// store, the API client, the sinks and exec commands need.
    pub fn fit_descriptors(mut self) -> Self {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if let (Some(cur), Some(max)) = (limit.current, limit.maximum)
            && cur < max
        {
            let raised = rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                debug!(
                    from = cur,
                    to = max,
                    "raised the soft descriptor limit to the hard one"
                );
                limit.current = Some(max);
            }
        }
        if let Some(cur) = limit.current {
            let half = usize::try_from(cur / 2).unwrap_or(usize::MAX).max(4);
            if half < self.max_connections {
                warn!(
                    configured = self.max_connections,
                    max_connections = half,
                    descriptor_limit = cur,
                    "server.max_connections lowered to half the descriptor limit; raise LimitNOFILE (ulimit -n) for more"
                );
                self.max_connections = half;
            }
        }
        self
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Milliseconds since the loop's start at the last byte read or written.
    active_at: Arc<AtomicU64>,
    /// Requests whose response has not been produced yet.
    in_flight: Arc<AtomicUsize>,
    /// Cancelled to close the connection now (evicted).
    evict: CancellationToken,
}

/// The open connections by id; a connection task removes its own entry when it ends.
type Conns = Arc<Mutex<HashMap<u64, Conn>>>;

/// Serve `router` on `listener` within `limits` until `stop`; then give open requests
/// [`DRAIN`] to finish and close the rest.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let epoch = Instant::now();
    let conns: Conns = Arc::default();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut last_log: Option<Instant> = None;
    let mut should_log = move || {
        let now = Instant::now();
        let due = last_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if due {
            last_log = Some(now);
        }
        due
    };
    let drain = stop.child_token();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE/ENFILE: descriptors run out elsewhere in the process. The
                    // pending connection stays queued; try again shortly, quietly.
                    if should_log() {
                        warn!(error = %e, "cannot accept a connection; retrying (logged once a minute)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let room = {
            let mut open = conns.lock().expect("not poisoned");
            open.len() < limits.max_connections || evict_quietest(&mut open)
        };
        if !room {
            if should_log() {
                info!(
                    max_connections = limits.max_connections,
                    "server full with requests in flight; refusing new connections (logged once a minute)"
                );
            }
            drop(stream);
            continue;
        }
        let conn = Conn {
            active_at: Arc::new(AtomicU64::new(ms_since(epoch))),
            in_flight: Arc::default(),
            evict: CancellationToken::new(),
        };
        let task = Connection {
            id: next_id,
            epoch,
            active_at: conn.active_at.clone(),
            in_flight: conn.in_flight.clone(),
            evict: conn.evict.clone(),
            conns: conns.clone(),
        };
        conns.lock().expect("not poisoned").insert(next_id, conn);
        next_id += 1;
        tasks.spawn(task.run(stream, router.clone(), limits, drain.clone()));
    }
    drop(listener);
    drain.cancel();
    let _ = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    // Dropping the set aborts what is left.
}

/// Close the connection quiet longest with no request in flight; false when every
/// connection has one.
fn evict_quietest(open: &mut HashMap<u64, Conn>) -> bool {
    let quietest = (open.iter())
        .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
        .min_by_key(|(_, c)| c.active_at.load(Ordering::Relaxed))
        .map(|(id, _)| *id);
    match quietest.and_then(|id| open.remove(&id)) {
        Some(c) => {
            c.evict.cancel();
            true
        }
        None => false,
    }
}

fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// One connection's task and what it shares with the accept loop.
struct Connection {
    id: u64,
    epoch: Instant,
    active_at: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    evict: CancellationToken,
    conns: Conns,
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        router: Router,
        limits: Limits,
        drain: CancellationToken,
    ) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Metered {
            inner: stream,
            epoch: self.epoch,
            active_at: self.active_at.clone(),
        });
        let in_flight = self.in_flight.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = InFlight::enter(&in_flight);
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(busy);
                response
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let mut tick =
            tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "connection closed");
                    }
                    break;
                }
                _ = self.evict.cancelled() => break,
                _ = drain.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => {
                    let quiet = ms_since(self.epoch)
                        .saturating_sub(self.active_at.load(Ordering::Relaxed));
                    if self.in_flight.load(Ordering::Relaxed) == 0
                        && Duration::from_millis(quiet) >= limits.idle_timeout
                    {
                        break;
                    }
                }
            }
        }
        self.conns.lock().expect("not poisoned").remove(&self.id);
    }
}

/// A request in flight on a connection, for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that stamps the time of every byte read or written.
struct Metered {
    inner: TcpStream,
    epoch: Instant,
    active_at: Arc<AtomicU64>,
}

impl Metered {
    fn stamp(&self) {
        self.active_at
            .store(ms_since(self.epoch), Ordering::Relaxed);
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp();
        }
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let router = Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let stop = CancellationToken::new();
        tokio::spawn(serve(l, router, limits, stop.clone()));
        (addr, stop)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Closed by the server: a read returns EOF (or a reset) within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_full_server_evicts_its_quietest_idle_connection_and_answers() {
        let (addr, stop) = start(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A half-sent request is no busier than an idle connection.
        idle[1]
            .write_all(b"GET /healthz HTTP/1.1\r\nx-")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..20 {
            assert!(get(addr).await.starts_with("HTTP/1.1 200"));
        }
        // The quietest made room, the first time the server was full.
        assert!(closed_within(&mut idle[0], Duration::from_secs(2)).await);
        // Eight newer connections push out every old one, the half-sent one included.
        let mut newer = Vec::new();
        for _ in 0..8 {
            newer.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for s in &mut idle {
            assert!(closed_within(s, Duration::from_secs(2)).await);
        }
        assert!(get(addr).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed_on_time() {
        let (addr, stop) = start(Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
        })
        .await;
        let t = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        assert!(closed_within(&mut partial, Duration::from_secs(3)).await);
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(get(addr).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }
}

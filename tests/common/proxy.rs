//! A TCP proxy the test can cut and restore: a network partition between one process and
//! its database. Cut, it drops every open connection and closes each new one at once
//! (the process sees resets, as when a link or a load balancer fails); restored, it
//! forwards again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: open connections end when it changes.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `upstream`; `cut` from the start
    /// when asked (a database unreachable at start).
    pub async fn start(upstream: SocketAddr, cut: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let is_cut = Arc::new(AtomicBool::new(cut));
        let (generation, _) = watch::channel(0u64);
        let (flag, gen_tx) = (is_cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut ended = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = ended.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut: is_cut,
            generation,
            task,
        }
    }

    /// `url` (a PostgreSQL URL) with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let at = url.find('@').expect("a URL with a user") + 1;
        let slash = at + url[at..].find('/').expect("a URL with a database");
        format!("{}{}{}", &url[..at], self.addr, &url[slash..])
    }

    /// Drop every connection and refuse new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

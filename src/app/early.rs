//! `run`'s early listener: bound, and answering probes, before the store opens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::server::{self, ServerState};

use super::ListenError;

/// `run`'s listener, bound before the store opens, with an interim server answering
/// `/healthz`, `/readyz` (503 and why until the store is open) and `/metrics` on it until
/// [`super::App::run`] serves the full router on the same socket.
pub(super) struct Early {
    listener: TcpListener,
    pub(super) addr: SocketAddr,
    /// `[server]`'s bounds, fitted to the descriptor limit.
    pub(super) limits: crate::listener::Limits,
    /// Stops the interim server when finished or dropped (a failed build).
    stop: tokio_util::sync::DropGuard,
    server: tokio::task::JoinHandle<()>,
}

impl Early {
    pub(super) async fn bind(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
    ) -> anyhow::Result<Early> {
        let l = TcpListener::bind(cfg.server.listen)
            .await
            .map_err(|source| ListenError {
                addr: cfg.server.listen,
                source,
            })?;
        let addr = l.local_addr()?;
        // Two handles on one socket: the interim server's, closed when it stops, and ours.
        let std = l.into_std()?;
        let interim = TcpListener::from_std(std.try_clone()?)?;
        let listener = TcpListener::from_std(std)?;
        let router = server::router(ServerState {
            metrics: metrics.clone(),
            health: health.clone(),
            outbox: None,
            status: None,
        });
        let limits = crate::listener::Limits {
            max_connections: cfg.server.max_connections,
            header_read_timeout: cfg.server.header_read_timeout,
            idle_timeout: cfg.server.idle_timeout,
        }
        .fit_descriptors();
        let token = CancellationToken::new();
        let server = tokio::spawn(crate::listener::serve(
            interim,
            router,
            limits,
            token.clone(),
        ));
        info!(%addr, "serving /healthz /readyz /metrics while the store opens");
        Ok(Early {
            listener,
            addr,
            limits,
            stop: token.drop_guard(),
            server,
        })
    }

    /// Stop the interim server (a second at most for its open requests); the socket
    /// stays bound, and connections made meanwhile wait in its backlog.
    pub(super) async fn finish(self) -> TcpListener {
        let Early {
            listener,
            stop,
            mut server,
            ..
        } = self;
        drop(stop);
        match tokio::time::timeout(Duration::from_secs(1), &mut server).await {
            Ok(r) => crate::health::joined(r, "the interim HTTP server"),
            Err(_) => server.abort(),
        }
        listener
    }
}

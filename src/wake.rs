//! The one signal from pollers to sink workers: "deliveries were committed, look again".
//!
//! The wiring (`app`) makes one [`Wake`] and hands clones to the poller and to every sink
//! worker, so neither module knows the other. Each worker holds its own [`Waiter`], which
//! remembers whether it has seen the latest signal: a signal sent while a worker is busy
//! is not lost, and one signal wakes every worker.

use std::sync::Arc;

use tokio::sync::watch;

/// The sending side, cheap to clone.
#[derive(Clone, Debug)]
pub struct Wake {
    tx: Arc<watch::Sender<()>>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

impl Wake {
    pub fn new() -> Self {
        Wake {
            tx: Arc::new(watch::Sender::new(())),
        }
    }

    /// Wake every waiter (each sees this at its next [`Waiter::wait`]).
    pub fn notify(&self) {
        self.tx.send_replace(());
    }

    /// A waiter that sees every signal sent from now on.
    pub fn subscribe(&self) -> Waiter {
        Waiter {
            rx: self.tx.subscribe(),
        }
    }
}

/// The receiving side of one worker.
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<()>,
}

impl Waiter {
    /// Resolves once a signal has been sent since the last call returned (at once if one
    /// already was). Never resolves once every [`Wake`] is gone.
    pub async fn wait(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_signal_reaches_every_waiter_even_one_that_was_busy() {
        let wake = Wake::new();
        let (mut a, mut b) = (wake.subscribe(), wake.subscribe());
        assert!(a.wait().now_or_never().is_none(), "nothing sent yet");
        wake.notify();
        // Neither was waiting when the signal was sent: both still see it, once.
        assert!(a.wait().now_or_never().is_some());
        assert!(b.wait().now_or_never().is_some());
        assert!(a.wait().now_or_never().is_none(), "seen signals are spent");
        wake.notify();
        wake.notify();
        assert!(a.wait().now_or_never().is_some());
        assert!(a.wait().now_or_never().is_none(), "signals coalesce");
    }

    #[tokio::test]
    async fn a_waiter_whose_senders_are_gone_waits_forever_instead_of_spinning() {
        let wake = Wake::new();
        let mut w = wake.subscribe();
        drop(wake);
        assert!(w.wait().now_or_never().is_none());
    }
}

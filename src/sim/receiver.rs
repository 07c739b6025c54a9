//! The webhook receiver of the demo, the integration tests and the benchmarks: a real HTTP
//! server on a loopback socket at the other end of a webhook sink.
//!
//! It counts every POST to its path and, unless told not to, keeps a copy of each
//! ([`Received`]). It answers 204, or what it was told to ([`Answer`]: a status, a
//! `Retry-After`, a delay), one scripted answer per request and then a default. Given a key
//! ([`ReceiverBuilder::verify_with`]) it behaves as a Standard Webhooks receiver should: a
//! request whose signature does not verify, or whose timestamp is more than
//! [`TOLERANCE_SECONDS`] away, is answered 401, and a verified `webhook-id` seen before is
//! noted as a duplicate (at-least-once delivery) and acknowledged again.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Server;
use crate::signing::{self as sign, SigningKey};

/// How far a verified request's `webhook-timestamp` may be from now (the Standard Webhooks
/// libraries' default).
pub const TOLERANCE_SECONDS: i64 = 300;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The signature check, when the receiver verifies ([`ReceiverBuilder::verify_with`]).
    pub signature: Option<Signature>,
    /// A verified request whose `webhook-id` an earlier verified request carried.
    pub duplicate: bool,
}

impl Received {
    /// A header as text; "" when absent or not text.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The `webhook-id` header.
    pub fn id(&self) -> String {
        self.header("webhook-id")
    }
}

/// The outcome of checking a request's Standard Webhooks signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    Valid,
    /// No signature in `webhook-signature` verifies with the key.
    Invalid,
    /// The signature verifies, but the timestamp is too far from now (a replay).
    Stale,
}

/// How to answer a request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Answer {
    /// Answer `status` at once, with no `Retry-After`.
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// Called with each request as it arrives, before it is answered.
pub type OnRequest = Arc<dyn Fn(&Received) + Send + Sync>;

/// How to start a [`Receiver`]; [`Receiver::start`] takes every default.
pub struct ReceiverBuilder {
    path: String,
    key: Option<SigningKey>,
    keep: bool,
    on_request: Option<OnRequest>,
}

impl ReceiverBuilder {
    /// The path it takes POSTs on (default `/hook`).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    /// Verify every request's signature with `key`: 401 when it fails, duplicates noted.
    pub fn verify_with(mut self, key: SigningKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Keep a copy of every request for [`Receiver::got`] (the default), or only count
    /// them (for long runs and benchmarks).
    pub fn keep_requests(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Call `f` with each request as it arrives (before a scripted delay).
    pub fn on_request(mut self, f: impl Fn(&Received) + Send + Sync + 'static) -> Self {
        self.on_request = Some(Arc::new(f));
        self
    }

    /// Bind 127.0.0.1 on an ephemeral port and serve.
    pub async fn start(self) -> io::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}{}", listener.local_addr()?, self.path);
        let shared = Arc::new(Shared {
            key: self.key,
            keep: self.keep,
            on_request: self.on_request,
            inner: Mutex::default(),
        });
        let app = Router::new()
            .route(&self.path, post(receive))
            .with_state(shared.clone());
        let server = Server::spawn(listener, app, CancellationToken::new(), "webhook receiver");
        Ok(Receiver {
            url,
            shared,
            server,
        })
    }
}

/// A running webhook receiver; dropping it stops the server too.
pub struct Receiver {
    /// Where to POST, e.g. `http://127.0.0.1:PORT/hook`.
    pub url: String,
    shared: Arc<Shared>,
    server: Server,
}

struct Shared {
    key: Option<SigningKey>,
    keep: bool,
    on_request: Option<OnRequest>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    count: usize,
    verified: usize,
    rejected: usize,
    duplicates: usize,
    got: Vec<Received>,
    /// `webhook-id`s of verified requests.
    seen: HashSet<String>,
    script: VecDeque<Answer>,
    default: Option<Answer>,
}

impl Receiver {
    /// A receiver on `/hook` that keeps every request and verifies nothing.
    pub async fn start() -> io::Result<Receiver> {
        Receiver::builder().start().await
    }

    /// Options other than [`Receiver::start`]'s.
    pub fn builder() -> ReceiverBuilder {
        ReceiverBuilder {
            path: "/hook".into(),
            key: None,
            keep: true,
            on_request: None,
        }
    }

    /// Answer the next requests with these, in order, then with the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Answer unscripted requests with `answer` (None: 204 at once).
    pub fn set_default(&self, answer: Option<Answer>) {
        self.lock().default = answer;
    }

    /// Every request so far, in order of arrival (none unless it keeps them).
    pub fn got(&self) -> Vec<Received> {
        self.lock().got.clone()
    }

    /// Requests so far, rejected ones included.
    pub fn count(&self) -> usize {
        self.lock().count
    }

    /// Requests whose signature verified, duplicates included.
    pub fn verified(&self) -> usize {
        self.lock().verified
    }

    /// Requests answered 401 for their signature ([`Signature::Invalid`] or `Stale`).
    pub fn rejected(&self) -> usize {
        self.lock().rejected
    }

    /// Verified requests with a `webhook-id` already verified before.
    pub fn duplicates(&self) -> usize {
        self.lock().duplicates
    }

    /// Stop accepting and wait (at most [`super::SHUTDOWN_GRACE`]) for open connections.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not take the server down with it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn check(key: &SigningKey, headers: &HeaderMap, body: &[u8]) -> Signature {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or_default();
    let id = header("webhook-id");
    if !sign::verify(key, id, ts, body, header("webhook-signature")) {
        Signature::Invalid
    } else if (chrono::Utc::now().timestamp() - ts).abs() > TOLERANCE_SECONDS {
        Signature::Stale
    } else {
        Signature::Valid
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let signature = shared.key.as_ref().map(|k| check(k, &headers, &body));
    let duplicate = signature == Some(Signature::Valid) && {
        let id = headers
            .get("webhook-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        !shared.lock().seen.insert(id)
    };
    let received = (shared.keep || shared.on_request.is_some()).then(|| Received {
        at,
        headers,
        body,
        signature,
        duplicate,
    });
    if let (Some(f), Some(received)) = (&shared.on_request, &received) {
        f(received);
    }
    let answer = {
        let mut inner = shared.lock();
        inner.count += 1;
        match signature {
            Some(Signature::Valid) => inner.verified += 1,
            Some(Signature::Invalid | Signature::Stale) => inner.rejected += 1,
            None => {}
        }
        inner.duplicates += usize::from(duplicate);
        if let Some(received) = received.filter(|_| shared.keep) {
            inner.got.push(received);
        }
        match signature {
            Some(Signature::Invalid | Signature::Stale) => Answer::status(401),
            _ => inner
                .script
                .pop_front()
                .or_else(|| inner.default.clone())
                .unwrap_or(Answer::status(204)),
        }
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = status.into_response();
    if let Some(value) = answer
        .retry_after
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    async fn post(rx: &Receiver, id: &str, ts: i64, body: &str, signed: &str) -> reqwest::Response {
        let key = SigningKey::parse(SECRET).unwrap();
        reqwest::Client::new()
            .post(&rx.url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                sign::sign(key.bytes(), id, ts, signed.as_bytes()),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keeps_every_request_and_answers_as_scripted() {
        let rx = Receiver::start().await.unwrap();
        assert!(rx.url.ends_with("/hook"), "{}", rx.url);
        rx.script([
            Answer {
                status: 429,
                retry_after: Some("7".into()),
                delay: Duration::ZERO,
            },
            Answer::status(500),
        ]);
        rx.set_default(Some(Answer {
            status: 202,
            retry_after: None,
            delay: Duration::from_millis(100),
        }));
        let now = chrono::Utc::now().timestamp();
        let first = post(&rx, "evt_1", now, "{\"n\": 1}", "unchecked").await;
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers()["retry-after"], "7");
        assert_eq!(post(&rx, "evt_2", now, "{}", "").await.status(), 500);
        let started = Instant::now();
        assert_eq!(post(&rx, "evt_3", now, "{}", "").await.status(), 202);
        assert!(started.elapsed() >= Duration::from_millis(100));
        rx.set_default(None);
        assert_eq!(post(&rx, "evt_4", now, "{}", "").await.status(), 204);

        let got = rx.got();
        assert_eq!(rx.count(), 4);
        let ids: Vec<String> = got.iter().map(Received::id).collect();
        assert_eq!(ids, ["evt_1", "evt_2", "evt_3", "evt_4"]);
        assert_eq!(got[0].json()["n"], 1);
        assert!(got.iter().all(|r| r.signature.is_none() && !r.duplicate));
        assert_eq!((rx.verified(), rx.rejected()), (0, 0));
        let other = reqwest::Client::new()
            .post(rx.url.replace("/hook", "/other"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
        rx.shutdown().await;
    }

    #[tokio::test]
    async fn verifies_signatures_and_notes_duplicates() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rx = Receiver::builder()
            .path("/hooks/loops")
            .verify_with(SigningKey::parse(SECRET).unwrap())
            .keep_requests(false)
            .on_request({
                let seen = seen.clone();
                move |r| {
                    seen.lock()
                        .unwrap()
                        .push((r.id(), r.signature, r.duplicate))
                }
            })
            .start()
            .await
            .unwrap();
        assert!(rx.url.ends_with("/hooks/loops"), "{}", rx.url);
        rx.set_default(Some(Answer::status(500)));
        rx.script([Answer::status(204)]);
        let now = chrono::Utc::now().timestamp();
        // Rejected requests leave the script alone.
        assert_eq!(
            post(&rx, "evt_a", now, "{}", "{\"x\":1}").await.status(),
            401
        );
        assert_eq!(
            post(&rx, "evt_a", now - 600, "{}", "{}").await.status(),
            401
        );
        assert_eq!(post(&rx, "evt_a", now, "{}", "{}").await.status(), 204);
        assert_eq!(post(&rx, "evt_a", now, "{}", "{}").await.status(), 500);
        assert_eq!(rx.count(), 4);
        assert!(rx.got().is_empty(), "told not to keep requests");
        assert_eq!((rx.verified(), rx.rejected(), rx.duplicates()), (2, 2, 1));
        let seen = seen.lock().unwrap().clone();
        let expected = [
            (Some(Signature::Invalid), false),
            (Some(Signature::Stale), false),
            (Some(Signature::Valid), false),
            (Some(Signature::Valid), true),
        ];
        assert_eq!(seen.len(), 4);
        for ((id, signature, duplicate), want) in seen.into_iter().zip(expected) {
            assert_eq!(id, "evt_a");
            assert_eq!((signature, duplicate), want);
        }
    }

    #[tokio::test]
    async fn dropping_it_stops_the_server() {
        let rx = Receiver::start().await.unwrap();
        let url = rx.url.clone();
        drop(rx);
        // Its server task stops soon after: wait for the first refused connection.
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let error = loop {
            match client.post(&url).send().await {
                Err(e) => break e,
                Ok(_) => assert!(std::time::Instant::now() < deadline, "still serving"),
            }
            tokio::task::yield_now().await;
        };
        assert!(error.is_connect(), "{error}");
    }
}

//! The Loops client: one `GET /v1/loops/checkpoints` per poll, behind one global token
//! bucket, with a request timeout and a cap on the body size. Errors say whether waiting
//! helps ([`Error::is_transient`]) and carry the server's `Retry-After`.

pub mod wire;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use url::Url;

use crate::config::{ApiConfig, AuthScheme, Filter};
use crate::http::{self, root_cause};
use crate::model::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("HTTP {code}: {message}")]
    Status {
        code: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("response is not a valid listing: {0}")]
    Decode(String),
    #[error("response is larger than api.max_response_bytes ({0} bytes)")]
    TooLarge(u64),
}

impl Error {
    /// Worth trying again soon: the fault is likely on the way or upstream.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout | Error::Connect(_) | Error::Transport(_) => true,
            Error::Status { code, .. } => *code == 429 || *code >= 500,
            Error::Decode(_) | Error::TooLarge(_) => false,
        }
    }

    /// Something only the operator can fix (a bad key, a wrong filter).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Error::Status {
                code: 401 | 403 | 404,
                ..
            }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Error::Status { code: 429, .. })
    }

    /// The `code` label of `loopwatch_api_requests_total`.
    pub fn code_label(&self) -> String {
        match self {
            Error::Timeout => "timeout".into(),
            Error::Connect(_) | Error::Transport(_) => "connect".into(),
            Error::Status { code, .. } => code.to_string(),
            Error::Decode(_) | Error::TooLarge(_) => "decode".into(),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    endpoint: Url,
    auth: HeaderValue,
    /// This process's share of `api.max_requests_per_second` ([`Client::share_budget`]).
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// `api.max_requests_per_second`: what the whole deployment may send.
    budget: f64,
    /// How many processes share the budget now.
    sharing: AtomicI64,
    max_bytes: u64,
}

/// The listing endpoint under `base`: a path prefix (a gateway's `/loops-proxy`) is
/// kept, with or without its trailing slash (URL resolution would drop its last segment).
fn endpoint(base: &Url) -> Result<Url, url::ParseError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v1/loops/checkpoints")
}

impl Client {
    pub fn new(cfg: &ApiConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let endpoint = endpoint(&cfg.base_url)?;
        let scheme = match cfg.auth_scheme {
            AuthScheme::Bearer => "Bearer",
            AuthScheme::ApiKey => "Api-Key",
        };
        let mut auth = HeaderValue::from_str(&format!("{scheme} {}", cfg.api_key.expose()))
            .map_err(|_| {
                anyhow::anyhow!("the API key contains characters not allowed in a header")
            })?;
        auth.set_sensitive(true);
        Ok(Client {
            http,
            endpoint,
            auth,
            limiter: RwLock::new(Arc::new(RateLimiter::direct(quota(
                cfg.max_requests_per_second,
            )))),
            budget: cfg.max_requests_per_second,
            sharing: AtomicI64::new(1),
            max_bytes: cfg.max_response_bytes,
        })
    }

    /// Share the budget with `replicas` live replicas (itself included): from now on this
    /// client sends at most `max_requests_per_second / replicas`, so the fleet sends the
    /// budget whatever its size. A change of count rebuilds the token bucket.
    pub fn share_budget(&self, replicas: i64) {
        let n = replicas.max(1);
        if self.sharing.swap(n, Ordering::Relaxed) != n {
            let limiter = RateLimiter::direct(quota(self.budget / n as f64));
            *self.limiter.write().expect("not poisoned") = Arc::new(limiter);
        }
    }

    /// The requests per second this client may send now (its share of the budget).
    pub fn rate(&self) -> f64 {
        self.budget / self.sharing.load(Ordering::Relaxed) as f64
    }

    /// Wait for a token of this client's share of the budget.
    async fn until_ready(&self) {
        let limiter = self.limiter.read().expect("not poisoned").clone();
        limiter.until_ready().await;
    }

    /// The whole listing for one filter; the request waits for a token first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Checkpoint>, Error> {
        self.fetch(filter).await?.decode()
    }

    /// The listing's body for one filter, not yet decoded: a poller that has seen the same
    /// body before ([`Body::digest`]) need not decode it again.
    pub async fn fetch(&self, filter: &Filter) -> Result<Body, Error> {
        self.until_ready().await;
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair(filter.query_key(), filter.value());
        let resp = self
            .http
            .get(url)
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = http::retry_after(resp.headers());
            // Never the whole of an error body: a proxy's page, or a hostile endless one.
            let body = http::error_body(resp).await;
            return Err(Error::Status {
                code: status.as_u16(),
                retry_after,
                message: error_message(&body),
            });
        }
        let bytes = self.read_body(resp).await?;
        Ok(Body {
            digest: xxhash_rust::xxh3::xxh3_128(&bytes),
            bytes,
        })
    }

    /// Read at most `max_bytes`, chunk by chunk: an endless body costs a bounded buffer.
    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, Error> {
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(Error::TooLarge(self.max_bytes));
        }
        let mut buf =
            Vec::with_capacity(resp.content_length().unwrap_or(8192).min(1 << 20) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if (buf.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(Error::TooLarge(self.max_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// A successful (2xx) listing body.
pub struct Body {
    bytes: Vec<u8>,
    digest: u128,
}

impl Body {
    /// A 128-bit digest (XXH3) of the exact bytes: equal digests mean the same listing.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// Decode the listing; a body that does not decode fails the poll as a whole.
    pub fn decode(&self) -> Result<Vec<Checkpoint>, Error> {
        wire::decode_listing(&self.bytes).map_err(Error::Decode)
    }
}

/// `rps` requests a second with a bucket of a tenth of a second's worth: a full bucket of
/// a whole second's worth let twice `rps` through in the first second (and after any
/// pause); this way no one-second window sees more than ~1.1x `rps`, and at high rates
/// waiters still wake in batches rather than one timer tick (1 ms) each.
fn quota(rps: f64) -> Quota {
    let per = Duration::from_secs_f64(1.0 / rps.max(1e-6));
    let burst =
        NonZeroU32::new((rps / 10.0).ceil().clamp(1.0, 1000.0) as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per)
        .expect("period > 0")
        .allow_burst(burst)
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if e.is_connect() {
        Error::Connect(root_cause(&e))
    } else {
        Error::Transport(root_cause(&e))
    }
}

/// A short, single-line description of an error body: the JSON `message` when there is
/// one, otherwise the first 200 characters of text.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = v.get("message").and_then(|m| m.as_str())
    {
        return http::one_line_snippet(m.as_bytes(), 200);
    }
    let flat = http::one_line_snippet(body, 200);
    if flat.is_empty() {
        "(empty body)".into()
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_holds_in_every_second_even_the_first() {
        use governor::clock::FakeRelativeClock;
        for rps in [0.5, 1.0, 10.0, 200.0] {
            let clock = FakeRelativeClock::default();
            let limiter = RateLimiter::direct_with_clock(quota(rps), clock.clone());
            // Requests as fast as allowed, counted per one-second window, 1 ms steps.
            let mut per_second = vec![0u32; 5];
            for ms in 0..5000 {
                while limiter.check().is_ok() {
                    per_second[ms / 1000] += 1;
                }
                clock.advance(Duration::from_millis(1));
            }
            let ceiling = (rps * 1.1).ceil().max(1.0) as u32;
            assert!(
                per_second.iter().all(|&n| n <= ceiling),
                "{rps} rps: {per_second:?}"
            );
            let total: u32 = per_second.iter().sum();
            assert!(
                f64::from(total) >= rps * 5.0 - 1.0,
                "{rps} rps: {per_second:?}"
            );
        }
    }

    #[test]
    fn a_base_url_path_prefix_is_kept_with_or_without_its_slash() {
        for base in ["http://gw/loops-proxy", "http://gw/loops-proxy/"] {
            let url = endpoint(&Url::parse(base).unwrap()).unwrap();
            assert_eq!(url.as_str(), "http://gw/loops-proxy/v1/loops/checkpoints");
        }
        let url = endpoint(&Url::parse("https://api.baseten.co").unwrap()).unwrap();
        assert_eq!(url.as_str(), "https://api.baseten.co/v1/loops/checkpoints");
    }

    #[test]
    fn error_bodies_become_one_line() {
        assert_eq!(
            error_message(br#"{"code":"UNAUTHORIZED","message":"bad key","details":null}"#),
            "bad key"
        );
        assert_eq!(
            error_message(b"<html>\n<body>502 Bad Gateway</body>\n</html>"),
            "<html> <body>502 Bad Gateway</body> </html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn classification() {
        let s = |code| Error::Status {
            code,
            retry_after: None,
            message: String::new(),
        };
        assert!(s(503).is_transient() && s(429).is_transient() && Error::Timeout.is_transient());
        assert!(!s(401).is_transient() && s(401).needs_operator() && s(403).needs_operator());
        assert!(!Error::Decode(String::new()).is_transient());
        assert_eq!(Error::Timeout.code_label(), "timeout");
        assert_eq!(s(502).code_label(), "502");
        assert_eq!(Error::TooLarge(1).code_label(), "decode");
    }
}

//! One signed POST. Redirects are not followed (a 3xx is a failure, per Standard
//! Webhooks); the timestamp is fresh on every attempt while `webhook-id` stays the event id.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{Failure, Sink};
use crate::config::{HeaderConfig, SinkKind};
use crate::signing::{self as sign, SigningKey};
use crate::store::StoredEvent;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("static client config")
}

#[allow(clippy::too_many_arguments)]
pub async fn send(
    http: &reqwest::Client,
    sink: &Sink,
    url: &url::Url,
    keys: &[&SigningKey],
    headers: &[HeaderConfig],
    event: &StoredEvent,
    timeout: Duration,
) -> Result<u16, Failure> {
    let payload = sink.payload(event).map_err(Failure::Payload)?;
    let ts = chrono::Utc::now().timestamp();
    let mut h = HeaderMap::new();
    for hc in headers {
        if let (Ok(n), Ok(mut v)) = (
            HeaderName::from_bytes(hc.name.as_bytes()),
            HeaderValue::from_str(hc.value.expose()),
        ) {
            v.set_sensitive(true);
            h.insert(n, v);
        }
    }
    for (k, v) in &payload.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&payload.content_type) {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(
        "webhook-id",
        HeaderValue::from_str(&event.id).map_err(|_| Failure::Payload("event id".into()))?,
    );
    h.insert("webhook-timestamp", HeaderValue::from(ts));
    let ed25519 = match &sink.cfg.kind {
        SinkKind::Webhook { signing_key, .. } => signing_key.as_ref(),
        SinkKind::Exec { .. } => None,
    };
    // Signed over the exact bytes sent below.
    if let Some(sig) = sign::signature_header(keys, ed25519, &event.id, ts, &payload.body) {
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&sig).expect("base64 is a valid header"),
        );
    }
    let resp = http
        .post(url.clone())
        .headers(h)
        .timeout(timeout)
        .body(payload.body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Connect(root_cause(&e))
            }
        })?;
    let code = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(code);
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::api::parse_retry_after(v, chrono::Utc::now()));
    // A short look at the body helps the operator; never read an unbounded one.
    let snippet = match tokio::time::timeout(Duration::from_secs(2), resp.bytes()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b[..b.len().min(200)])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    Err(Failure::Status {
        code,
        retry_after,
        body: snippet,
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    // reqwest's messages include the URL, which may carry a token: keep only the cause.
    cur.to_string()
}

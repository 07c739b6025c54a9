//! One signed POST. Redirects are not followed (a 3xx is a failure, per Standard
//! Webhooks); the timestamp is fresh on every attempt while `webhook-id` stays the event id.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::Failure;
use super::payload::Payload;
use crate::config::HeaderConfig;
use crate::http::{self, root_cause};
use crate::signing::{self as sign, SigningKey};

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("static client config")
}

/// Where and how one sink's webhooks go.
pub struct Target<'a> {
    pub url: &'a url::Url,
    /// The `whsec_` keys to sign with (the current one, then a previous one in rotation).
    pub keys: &'a [&'a SigningKey],
    /// A `whsk_` key for the asymmetric `v1a` signature.
    pub ed25519: Option<&'a sign::Ed25519Key>,
    pub headers: &'a [HeaderConfig],
    pub timeout: Duration,
}

/// POST `payload` for the event `event_id`, signed over the exact bytes sent.
pub async fn send(
    http: &reqwest::Client,
    to: &Target<'_>,
    event_id: &str,
    payload: Payload,
) -> Result<u16, Failure> {
    let ts = chrono::Utc::now().timestamp();
    let mut h = HeaderMap::new();
    for hc in to.headers {
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
        HeaderValue::from_str(event_id).map_err(|_| Failure::Payload("event id".into()))?,
    );
    h.insert("webhook-timestamp", HeaderValue::from(ts));
    // Signed over the exact bytes sent below.
    if let Some(sig) = sign::signature_header(to.keys, to.ed25519, event_id, ts, &payload.body) {
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&sig).expect("base64 is a valid header"),
        );
    }
    let resp = http
        .post(to.url.clone())
        .headers(h)
        .timeout(to.timeout)
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
    let retry_after = http::retry_after(resp.headers());
    // A short look at the body helps the operator; a few KiB for a few seconds at most,
    // whatever the receiver sends (a multi-gigabyte body, a drip, no end).
    let snippet = http::one_line_snippet(&http::error_body(resp).await, 200);
    Err(Failure::Status {
        code,
        retry_after,
        body: snippet,
    })
}

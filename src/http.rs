//! HTTP helpers shared by the Loops client (`api`) and the sinks (`delivery`), below
//! both: `Retry-After`, root causes of transport errors, the short, bounded look at an
//! error body that goes into a log line or `deliveries list`, and the process-wide
//! budget of response bytes held in memory ([`budget`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// At most this much of an error body is read: enough for the message an operator
/// needs, never a receiver's idea of a gigabyte.
pub const ERROR_BODY_LIMIT: usize = 4 * 1024;

/// And for at most this long: a body dripped a byte a second, or one that never ends,
/// must not hold the attempt (or the poll) past this.
pub const ERROR_BODY_TIME: Duration = Duration::from_secs(2);

/// Bodies up to this size are read without asking the [`budget`]: every answer but a
/// listing or a files page is this small (a deploy's, a source's, an error's), and one
/// must never wait for memory once its request has done its work upstream.
pub const UNBUDGETED: usize = 64 * 1024;

/// The bytes of response bodies the process holds at once (`api.max_buffered_bytes`),
/// across every target's listing, every probe's files pages and every deploy sink's
/// answer: N hostile targets answering the largest allowed body cost this, not N times
/// it. A body takes its share as it arrives and keeps it for as long as it is held (a
/// listing: until its poll ends); a body over the rest waits for room.
pub struct Budget {
    room: Arc<Semaphore>,
    total: AtomicUsize,
}

/// The process's one [`Budget`]; 128 MiB until [`Budget::resize`]d by the API client.
pub fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| Budget {
        room: Arc::new(Semaphore::new(128 << 20)),
        total: AtomicUsize::new(128 << 20),
    })
}

impl Budget {
    /// Set the total to `bytes` (what is held now stays held; a shrink takes effect as
    /// it comes back, as far as it can).
    pub fn resize(&self, bytes: u64) {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS / 2);
        let was = self.total.swap(bytes, Ordering::SeqCst);
        if bytes > was {
            self.room.add_permits(bytes - was);
        } else {
            self.room.forget_permits(was - bytes);
        }
    }

    /// The total, in bytes.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }

    /// Wait for `bytes` of room, taken in one go: a body whose size is not announced
    /// takes room for the largest allowed one and gives back the rest once read
    /// ([`Share::shrink_to`]). Two bodies each holding part and waiting for more would
    /// wait for each other; one acquisition each cannot.
    pub async fn take(&self, bytes: usize) -> Share {
        let bytes = u32::try_from(bytes.min(self.total())).unwrap_or(u32::MAX);
        let held = (self.room.clone().acquire_many_owned(bytes).await)
            .expect("the budget's semaphore is never closed");
        Share { held: Some(held) }
    }
}

/// Bytes of the [`budget`] held by one body, given back when dropped.
pub struct Share {
    held: Option<OwnedSemaphorePermit>,
}

impl Share {
    /// Nothing held (a small body, [`UNBUDGETED`]).
    pub fn none() -> Share {
        Share { held: None }
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Give back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        let excess = self.bytes().saturating_sub(bytes);
        if let Some(held) = self.held.as_mut()
            && excess > 0
        {
            drop(held.split(excess));
        }
    }
}

/// The longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as delta-seconds or an HTTP-date, capped at a day.
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The `Retry-After` of a response, if it has a readable one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

/// The start of an error response's body: at most [`ERROR_BODY_LIMIT`] bytes, read chunk
/// by chunk for at most [`ERROR_BODY_TIME`] (what arrived by then). Never `bytes()`: that
/// buffers whatever the peer sends. The response is dropped unread after, which closes its
/// connection instead of draining it into the pool.
///
/// Every secret this process knows is redacted from it ([`crate::redact`]) before anyone
/// sees it: a peer may echo the request's `Authorization` header. A secret cut in half by
/// the limit would escape that, so the read goes on for the longest secret's length,
/// and the cut is made after.
pub async fn error_body(resp: reqwest::Response) -> Vec<u8> {
    error_body_within(resp, ERROR_BODY_LIMIT, ERROR_BODY_TIME).await
}

async fn error_body_within(mut resp: reqwest::Response, limit: usize, time: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let read_to = limit + crate::redact::longest();
    let read = async {
        while buf.len() < read_to {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = read_to - buf.len();
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(time, read).await;
    let mut body = crate::redact::secrets_in(&buf).into_owned();
    body.truncate(limit);
    body
}

/// An error body as one short line for a log or `deliveries list`: lossy UTF-8, known
/// secrets redacted, whitespace collapsed, control characters escaped, at most `max`
/// characters.
pub fn one_line_snippet(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = crate::redact::secrets(&flat);
    let short: String = flat.chars().take(max).collect();
    crate::text::escape(&short).into_owned()
}

/// The innermost cause of an error, which names the actual failure (refused, reset,
/// TLS). reqwest's outer messages include the URL, which may carry a token: only the
/// cause is kept, known secrets redacted.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    crate::redact::secrets(&cur.to_string()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_caps_them() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// A raw HTTP/1.1 peer: answers the first request with `head`, then feeds the body
    /// with `feed` (called until it returns false or the client leaves). Returns the URL,
    /// the count of body bytes it managed to write, and its task, which ends when the
    /// client has closed the connection.
    async fn peer(
        head: &'static str,
        feed: impl Fn(&mut Vec<u8>) -> (bool, Duration) + Send + 'static,
    ) -> (
        String,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
        tokio::task::JoinHandle<()>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = written.clone();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let (more, wait) = feed(&mut buf);
                if !buf.is_empty() {
                    if s.write_all(&buf).await.is_err() {
                        return;
                    }
                    count.fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
                if !more {
                    // Never closes: the client must give up by itself.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(wait).await;
            }
        });
        (url, written, task)
    }

    #[tokio::test]
    async fn a_gigabyte_error_body_costs_a_few_kib_and_closes_the_connection() {
        let (url, written, peer_task) = peer(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2147483648\r\n\r\n",
            |b| {
                b.resize(64 * 1024, b'x');
                (true, Duration::ZERO)
            },
        )
        .await;
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 500);
        let body = error_body(resp).await;
        assert_eq!(body.len(), ERROR_BODY_LIMIT);
        // The connection was dropped: the peer's writes fail (its task ends) at what the
        // socket buffers hold, nowhere near its 2 GiB (it used to be read for 2 s: over a
        // gigabyte).
        tokio::time::timeout(Duration::from_secs(30), peer_task)
            .await
            .expect("the connection was closed")
            .unwrap();
        let sent = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 64 << 20, "the peer wrote {sent} bytes");
    }

    #[tokio::test]
    async fn a_dripped_or_endless_error_body_is_cut_at_the_time_cap() {
        let (url, _, _) = peer(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000000\r\n\r\n",
            |b| {
                b.push(b'd');
                (true, Duration::from_millis(50))
            },
        )
        .await;
        let start = std::time::Instant::now();
        let resp = reqwest::get(&url).await.unwrap();
        let body = error_body_within(resp, ERROR_BODY_LIMIT, Duration::from_millis(400)).await;
        assert!(!body.is_empty() && body.len() < 100, "{}", body.len());
        assert!(body.iter().all(|&b| b == b'd'));
        assert!(start.elapsed() < Duration::from_secs(10));

        // Headers, then nothing and no end.
        let (url, _, _) = peer(
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
            |_| (false, Duration::ZERO),
        )
        .await;
        let resp = reqwest::get(&url).await.unwrap();
        let body = error_body_within(resp, ERROR_BODY_LIMIT, Duration::from_millis(300)).await;
        assert!(body.is_empty());
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(one_line_snippet(b"  a\n\tb  c ", 200), "a b c");
        assert_eq!(one_line_snippet(&[b'x'; 1000], 5), "xxxxx");
        assert_eq!(one_line_snippet(b"\xff ok", 200), "\u{fffd} ok");
        assert_eq!(
            one_line_snippet(b"a\x1b[2J\x07\0b", 200),
            "a\\u{1b}[2J\\u{7}\\0b"
        );
    }
}

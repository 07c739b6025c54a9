//! Misbehaviours of the upstream on demand ([`Fault`]), queued per [`Route`]: one-shot
//! faults in order, then a sticky one, as set through [`super::SimHandle`]. The routes ask
//! [`apply`] what a request's fault does to it before they answer.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Route;
use super::json::{JSON, error_body, json_body};

/// A misbehaviour of the upstream, applied to one request ([`super::SimHandle::push_fault`])
/// or to every request ([`super::SimHandle::set_fault`]).
///
/// Faults that answer on their own (status, HTML, empty, huge, closed, non-object) skip
/// authentication and filter validation, as a proxy in front of the API would. Faults that
/// alter the listing apply only when the request would otherwise get a 200.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status; the body defaults to a JSON error object. A code that is not
    /// a valid HTTP status becomes 500.
    Status {
        code: u16,
        retry_after: Option<String>,
        body: Option<String>,
    },
    /// Sleep, then answer normally (for client timeouts).
    Delay(Duration),
    /// 502 with a proxy's HTML error page.
    Html,
    /// 200 with an HTML page (a captive portal or login page).
    HtmlOk,
    /// 200 with the listing's JSON cut in half.
    Truncated,
    /// 200; the first checkpoint lacks this key.
    MissingField(String),
    /// 200; this key of the first checkpoint has a JSON type the schema does not allow
    /// (even in the lax mode of Baseten's models: a number becomes `"123 units"`).
    WrongType(String),
    /// 200; the top-level object and every checkpoint carry extra fields.
    UnknownFields,
    /// 200 with `{"checkpoints": []}`.
    Empty,
    /// 200; the first checkpoint appears twice.
    DuplicateId,
    /// 200 with a chunked body of this many bytes and no content-length, generated lazily.
    Huge(u64),
    /// Drop the connection without a complete response.
    CloseConnection,
    /// 200 with the body `[]`.
    NotJsonObject,
    /// Act (a deploy deploys, a promotion promotes), then answer only after this long:
    /// a client that gives up first does not know the outcome.
    ActThenDelay(Duration),
    /// Act, then send `200` and drop the connection before the body.
    ActThenClose,
    /// The files route pages without end (the listing route ignores it).
    Paging(Paging),
    /// 200; every integer of the answer is sent as Baseten's pydantic models still accept
    /// it: as a string (`"123"`) or a whole float (`123.0`), in turn.
    LaxNumbers,
}

/// Paging a client must not follow for ever: `next_page_token` is never null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// The tokens cycle: 0 -> 1 -> 2 -> 1 -> 2 ... (never the page's own token, so a
    /// client that only checks for that pages for ever).
    Cycle,
    /// Each page points to a new one, and `total_count` grows to stay a page ahead.
    Growing,
    /// Pages with no files, each pointing to a new one; `total_count` stays as it is.
    EmptyPages,
}

/// The faults waiting for each route's requests.
#[derive(Default)]
pub(super) struct Faults {
    queued: HashMap<Route, VecDeque<Fault>>,
    sticky: HashMap<Route, Fault>,
}

impl Faults {
    /// Queue `fault` for the next request to `route` (FIFO).
    pub(super) fn push(&mut self, route: Route, fault: Fault) {
        self.queued.entry(route).or_default().push_back(fault);
    }

    /// Apply `fault` to every request to `route` until cleared with None.
    pub(super) fn set(&mut self, route: Route, fault: Option<Fault>) {
        match fault {
            Some(fault) => self.sticky.insert(route, fault),
            None => self.sticky.remove(&route),
        };
    }

    /// The fault of a request to `route` arriving now: one-shot faults beat the sticky one.
    pub(super) fn take(&mut self, route: Route) -> Option<Fault> {
        let queued = self.queued.get_mut(&route).and_then(VecDeque::pop_front);
        queued.or_else(|| self.sticky.get(&route).cloned())
    }
}

/// What a fault does to one request.
pub(super) enum Effect {
    /// Answer normally.
    Pass,
    /// Answer with this instead.
    Respond(Response),
    /// Answer with the normal 200 body damaged by [`alter`].
    Alter(Fault),
}

/// Apply a request's fault: wait out a delay (cut short by `stop`), or say how to answer.
pub(super) async fn apply(fault: Option<Fault>, stop: &CancellationToken) -> Effect {
    let Some(fault) = fault else {
        return Effect::Pass;
    };
    let response = match fault {
        Fault::Delay(wait) => {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
            return Effect::Pass;
        }
        Fault::Status {
            code,
            retry_after,
            body,
        } => status(code, retry_after, body),
        Fault::Html => html(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE),
        Fault::HtmlOk => html(StatusCode::OK, LOGIN_PAGE),
        Fault::Empty => json_body(&br#"{"checkpoints": []}"#[..]),
        Fault::NotJsonObject => json_body(&b"[]"[..]),
        Fault::Huge(size) => huge(size, stop.clone()),
        Fault::CloseConnection => close_connection(),
        fault @ (Fault::Truncated
        | Fault::MissingField(_)
        | Fault::WrongType(_)
        | Fault::UnknownFields
        | Fault::DuplicateId
        | Fault::Paging(_)
        | Fault::LaxNumbers
        | Fault::ActThenDelay(_)
        | Fault::ActThenClose) => return Effect::Alter(fault),
    };
    Effect::Respond(response)
}

/// Apply a fault that damages an otherwise good answer: the listing, or another route's
/// JSON. Field faults hit the first item (the first checkpoint, the first file, the
/// `source` object) when it has the key, else the top-level object.
pub(super) fn alter(fault: Fault, mut answer: Value) -> Response {
    if let Fault::Paging(_) = fault {
        // Applied by the files route itself, which knows the page asked for.
        return json_body(serde_json::to_vec(&answer).expect("json serializes"));
    }
    if let Fault::LaxNumbers = fault {
        let mut turn = false;
        laxen(&mut answer, &mut turn);
        return json_body(serde_json::to_vec(&answer).expect("json serializes"));
    }
    if let Fault::ActThenClose = fault {
        return close_connection();
    }
    if let Fault::Truncated = fault {
        let mut body = serde_json::to_vec(&answer).expect("json serializes");
        body.truncate(body.len() / 2);
        return json_body(body);
    }
    if let Fault::UnknownFields = fault {
        answer["sim_extra"] = json!({"nested": true});
    }
    let Some(top) = answer.as_object_mut() else {
        return json_body(serde_json::to_vec(&answer).expect("json serializes"));
    };
    let list_key = ["checkpoints", "presigned_urls"]
        .into_iter()
        .find(|k| top.get(*k).is_some_and(Value::is_array));
    match fault {
        Fault::MissingField(key) => {
            if let Some(item) = first_item(top, list_key).filter(|i| i.contains_key(&key)) {
                item.remove(&key);
            } else if list_key.is_none() || top.contains_key(&key) {
                top.remove(&key);
            }
        }
        Fault::WrongType(key) => {
            let in_item = first_item(top, list_key).is_some_and(|i| i.contains_key(&key));
            let target = if in_item || (list_key.is_some() && !top.contains_key(&key)) {
                first_item(top, list_key)
            } else {
                Some(&mut *top)
            };
            if let Some(target) = target {
                let wrong = match target.get(&key) {
                    Some(Value::String(_) | Value::Null) | None => json!(42),
                    // Not "123": the SDK's models read a string of digits as an integer.
                    Some(Value::Number(n)) => json!(format!("{n} units")),
                    Some(_) => json!("not-the-right-type"),
                };
                target.insert(key, wrong);
            }
        }
        Fault::UnknownFields => {
            if let Some(Value::Array(items)) = list_key.and_then(|k| top.get_mut(k)) {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.insert("sim_extra".into(), json!({"nested": [1, "two", null]}));
                    item.insert("sim_note".into(), json!("a field added upstream"));
                }
            }
        }
        Fault::DuplicateId => {
            if let Some(Value::Array(items)) = list_key.and_then(|k| top.get_mut(k))
                && let Some(first) = items.first().cloned()
            {
                items.insert(0, first);
            }
        }
        _ => unreachable!("faults that answer on their own never reach alter"),
    }
    json_body(serde_json::to_vec(&answer).expect("json serializes"))
}

/// Every integer under `v` as a string or a whole float, alternately.
fn laxen(v: &mut Value, turn: &mut bool) {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            *turn = !*turn;
            let text = n.to_string();
            *v = match *turn {
                true => Value::String(text),
                false => json!(text.parse::<f64>().expect("an integer reads as a float")),
            };
        }
        Value::Array(items) => items.iter_mut().for_each(|i| laxen(i, turn)),
        Value::Object(map) => map.values_mut().for_each(|i| laxen(i, turn)),
        _ => {}
    }
}

/// The first element of the answer's list, or its `source` object.
fn first_item<'a>(
    top: &'a mut serde_json::Map<String, Value>,
    list_key: Option<&str>,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    match list_key {
        Some(k) => top
            .get_mut(k)
            .and_then(Value::as_array_mut)
            .and_then(|a| a.first_mut())
            .and_then(Value::as_object_mut),
        None => top.get_mut("source").and_then(Value::as_object_mut),
    }
}

fn status(code: u16, retry_after: Option<String>, body: Option<String>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match body {
        Some(body) if serde_json::from_str::<Value>(&body).is_ok() => {
            (status, [(CONTENT_TYPE, JSON)], body).into_response()
        }
        Some(body) => (status, [(CONTENT_TYPE, "text/plain")], body).into_response(),
        None => error_body(status, "Simulated fault."),
    };
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const LOGIN_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method=\"post\"><input name=\"password\" type=\"password\"></form></body></html>";

fn html(status: StatusCode, page: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// A body that never exists in memory: a listing's opening, then spaces up to `size` bytes.
fn huge(size: u64, stop: CancellationToken) -> Response {
    const OPENING: &[u8] = b"{\"checkpoints\": [";
    static PADDING: [u8; 64 * 1024] = [b' '; 64 * 1024];
    let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
        let (source, left) = match sent {
            0 => (OPENING, size),
            _ => (&PADDING[..], size - sent),
        };
        let len = source
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = Bytes::from_static(&source[..len]);
        (len > 0).then_some((Ok::<_, Infallible>(chunk), sent + len as u64))
    });
    // Stop at shutdown, or graceful shutdown would wait for the whole body.
    let body = Body::from_stream(chunks.take_until(stop.cancelled_owned()));
    json_body(body)
}

/// A body that fails before its first byte makes hyper abort the connection.
fn close_connection() -> Response {
    let failure = io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "simulated connection drop",
    );
    let body = Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, _>(failure)
    }));
    body.into_response()
}

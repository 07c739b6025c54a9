//! The simulated API over HTTP, as its clients see it: filters, auth, the schema, training
//! runs by the clock, and every fault.

use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta};
use serde_json::{Value, json};

use super::{CHECKPOINTS_PATH, DEFAULT_BASE_MODEL, Fault, Route, SimApi};

/// GET the checkpoints endpoint with `query` pairs (URL-encoded here).
async fn get(sim: &SimApi, query: &[(&str, &str)]) -> reqwest::Response {
    get_with(sim, query, None).await.expect("request succeeds")
}

async fn get_with(
    sim: &SimApi,
    query: &[(&str, &str)],
    auth: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let url = format!("{}{CHECKPOINTS_PATH}?{query}", sim.base_url());
    let mut request = reqwest::Client::new().get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).expect("a JSON body")
}

/// The checkpoints of a 200 listing.
async fn listing(sim: &SimApi, query: &[(&str, &str)]) -> Vec<Value> {
    let response = get(sim, query).await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    body["checkpoints"]
        .as_array()
        .expect("checkpoints array")
        .clone()
}

/// One string field of every checkpoint, in listing order.
fn field(checkpoints: &[Value], key: &str) -> Vec<String> {
    let value = |c: &Value| c[key].as_str().expect("a string field").to_owned();
    checkpoints.iter().map(value).collect()
}

#[tokio::test]
async fn exactly_one_filter_is_required() {
    let sim = SimApi::start(None).await.unwrap();
    let bad =
        json!({"code": "BAD_REQUEST", "message": "Provide exactly one filter.", "details": null});
    for query in [
        &[][..],
        &[("run_id", "a"), ("base_model", "m")],
        &[("run_id", "")],
    ] {
        let response = get(&sim, query).await;
        assert_eq!(response.status(), 400, "{query:?}");
        assert_eq!(json_of(response).await, bad);
    }
    assert!(
        listing(&sim, &[("run_id", "a"), ("base_model", "")])
            .await
            .is_empty()
    );
    assert_eq!(sim.handle().requests(), 4);
    assert_eq!(
        sim.handle().last_query().as_deref(),
        Some("run_id=a&base_model=")
    );
}

#[tokio::test]
async fn both_auth_schemes_are_accepted_and_others_rejected() {
    let sim = SimApi::start(Some("sekret".into())).await.unwrap();
    let query = [("run_id", "r")];
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sekret"),
        Some("Basic sekret"),
    ] {
        let response = get_with(&sim, &query, auth).await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body = json_of(response).await;
        assert_eq!(body["code"], "UNAUTHORIZED");
        assert!(body["message"].is_string() && body["details"].is_null());
    }
    for auth in ["Bearer sekret", "Api-Key sekret", "bearer sekret"] {
        let response = get_with(&sim, &query, Some(auth)).await.unwrap();
        assert_eq!(response.status(), 200, "{auth}");
    }
    assert_eq!(
        sim.handle().last_authorization().as_deref(),
        Some("bearer sekret")
    );
}

#[tokio::test]
async fn an_added_checkpoint_has_the_schema_fields_and_follows_changes() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    let id = handle.add_checkpoint("r1", "sampler", "step-100", Some("SYNCING"));
    let checkpoints = listing(&sim, &[("run_id", "r1")]).await;
    let checkpoint = checkpoints[0].as_object().unwrap();
    let mut keys: Vec<_> = checkpoint.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let expected = [
        "base_model",
        "checkpoint_id",
        "checkpoint_type",
        "created_at",
        "id",
        "lora_adapter_config",
        "lora_config",
        "run_id",
        "size_bytes",
        "sync_status",
        "target",
    ];
    assert_eq!(keys, expected);
    assert_eq!(checkpoint["id"], json!(id));
    assert_eq!(checkpoint["sync_status"], "SYNCING");
    assert_eq!(checkpoint["base_model"], DEFAULT_BASE_MODEL);
    assert!(checkpoint["size_bytes"].is_u64());
    let created_at = checkpoint["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "{created_at}"
    );
    assert!(DateTime::parse_from_rfc3339(created_at).is_ok());

    handle.set_status(&id, Some("COMPLETE"));
    handle.set_field(&id, "new_field", json!({"a": 1}));
    let checkpoint = &listing(&sim, &[("run_id", "r1")]).await[0];
    assert_eq!(checkpoint["sync_status"], "COMPLETE");
    assert_eq!(checkpoint["new_field"], json!({"a": 1}));
    handle.set_status(&id, None);
    assert_eq!(
        listing(&sim, &[("run_id", "r1")]).await[0]["sync_status"],
        Value::Null
    );

    handle.remove(&id);
    assert_eq!(handle.checkpoint_count(), 0);
    assert!(listing(&sim, &[("run_id", "r1")]).await.is_empty());
}

#[tokio::test]
async fn listings_are_newest_first() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    let added = handle.add_many("r1", 3, None);
    handle.set_field(&added[0], "created_at", json!("2030-01-01T00:00:00.000Z"));
    let got = field(&listing(&sim, &[("run_id", "r1")]).await, "id");
    // Same millisecond for the other two: ties go to the larger (later) id.
    assert_eq!(got, [&added[0], &added[2], &added[1]].map(String::as_str));
}

#[tokio::test]
async fn checkpoint_path_selects_run_target_and_name() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    let sampler = handle.add_checkpoint("r1", "sampler", "step-100", None);
    let trainer = handle.add_checkpoint("r1", "trainer", "step-100", None);
    handle.add_checkpoint("r2", "sampler", "step-100", None);
    handle.add_checkpoint("r1", "sampler", "step-200", None);
    let by_path =
        async |path: &str| field(&listing(&sim, &[("checkpoint_path", path)]).await, "id");
    assert_eq!(
        by_path("bt://loops:r1/sampler_weights/step-100").await,
        [sampler.as_str()]
    );
    assert_eq!(
        by_path("bt://loops:r1/weights/step-100").await,
        [trainer.as_str()]
    );
    // No such checkpoint: 404 with the API's JSON error, never an empty listing.
    let response = get(
        &sim,
        &[("checkpoint_path", "bt://loops:r3/weights/step-100")],
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["code"], "NOT_FOUND");
    for bad in [
        "bt://loops:r1/adapter/step-100",
        "loops:r1/weights/step-100",
        "bt://loops:/weights/x",
        "bt://loops:r1/weights/",
    ] {
        let response = get(&sim, &[("checkpoint_path", bad)]).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(json_of(response).await["code"], "BAD_REQUEST");
    }
}

#[tokio::test]
async fn base_model_spans_runs() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    handle.set_base_model("r1", "org/model-a");
    handle.set_base_model("r2", "org/model-a");
    handle.add_checkpoint("r1", "sampler", "step-1", None);
    handle.add_checkpoint("r2", "trainer", "step-2", None);
    handle.add_checkpoint("r3", "sampler", "step-3", None);
    let checkpoints = listing(&sim, &[("base_model", "org/model-a")]).await;
    assert_eq!(field(&checkpoints, "checkpoint_id"), ["step-2", "step-1"]);
    let checkpoints = listing(&sim, &[("base_model", DEFAULT_BASE_MODEL)]).await;
    assert_eq!(field(&checkpoints, "checkpoint_id"), ["step-3"]);
}

#[tokio::test]
async fn a_training_run_saves_and_syncs_by_the_clock() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    let started = handle.now();
    let (every, sync_for) = (Duration::from_secs(10), Duration::from_secs(7));
    handle.start_training_run_at("r1", "org/m", every, sync_for, Some(3), started);
    assert!(listing(&sim, &[("run_id", "r1")]).await.is_empty());

    // 25s in: saves at 10s (synced at 17s) and 20s (syncing until 27s).
    handle.advance_clock(Duration::from_secs(25));
    let checkpoints = listing(&sim, &[("run_id", "r1")]).await;
    let names = field(&checkpoints, "checkpoint_id");
    assert_eq!(names, ["step-200", "step-200", "step-100", "step-100"]);
    let status = field(&checkpoints, "sync_status");
    assert_eq!(status, ["SYNCING", "SYNCING", "COMPLETE", "COMPLETE"]);
    let mut targets = field(&checkpoints[..2], "target");
    targets.sort_unstable();
    assert_eq!(targets, ["sampler", "trainer"]);
    let at = (started + TimeDelta::seconds(20)).to_rfc3339_opts(SecondsFormat::Millis, true);
    assert_eq!(checkpoints[0]["created_at"], json!(at));
    assert_eq!(checkpoints[0]["base_model"], "org/m");

    // A removed save stays removed; `max_saves` caps the run.
    handle.remove(checkpoints[3]["id"].as_str().unwrap());
    handle.advance_clock(Duration::from_secs(600));
    let checkpoints = listing(&sim, &[("base_model", "org/m")]).await;
    assert_eq!(checkpoints.len(), 5);
    assert!(checkpoints.iter().all(|c| c["sync_status"] == "COMPLETE"));
    assert_eq!(handle.checkpoint_count(), 5);
}

#[tokio::test]
async fn status_and_html_faults() {
    let sim = SimApi::start(Some("k".into())).await.unwrap();
    let handle = sim.handle();
    let query = [("run_id", "r")];
    handle.push_fault(Fault::Status {
        code: 503,
        retry_after: Some("2".into()),
        body: None,
    });
    handle.push_fault(Fault::Status {
        code: 429,
        retry_after: None,
        body: Some("slow down".into()),
    });
    handle.push_fault(Fault::Html);
    handle.push_fault(Fault::HtmlOk);
    // Faults answer before auth, as a proxy would.
    let response = get_with(&sim, &query, None).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(json_of(response).await["code"], "SERVICE_UNAVAILABLE");
    let response = get_with(&sim, &query, None).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.text().await.unwrap(), "slow down");
    for status in [502, 200] {
        let response = get_with(&sim, &query, None).await.unwrap();
        assert_eq!(response.status(), status);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(response.text().await.unwrap().contains("<html"));
    }
    assert_eq!(get_with(&sim, &query, None).await.unwrap().status(), 401);
    assert_eq!(handle.requests(), 5);
}

#[tokio::test]
async fn listing_faults_damage_the_body_as_described() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    handle.add_checkpoint("r", "sampler", "step-1", Some("COMPLETE"));
    handle.add_checkpoint("r", "trainer", "step-1", None);
    let query = [("run_id", "r")];
    let body = |fault: Fault| {
        handle.push_fault(fault);
        async {
            let response = get(&sim, &query).await;
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }
    };
    let truncated = body(Fault::Truncated).await;
    assert!(serde_json::from_slice::<Value>(&truncated).is_err());
    assert!(truncated.starts_with(b"{\"checkpoints\":["));

    let value = |bytes: Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();
    let missing = value(body(Fault::MissingField("size_bytes".into())).await);
    assert!(missing["checkpoints"][0].get("size_bytes").is_none());
    assert!(missing["checkpoints"][1].get("size_bytes").is_some());
    let wrong = value(body(Fault::WrongType("size_bytes".into())).await);
    assert!(wrong["checkpoints"][0]["size_bytes"].is_string());
    let wrong = value(body(Fault::WrongType("checkpoint_id".into())).await);
    assert_eq!(wrong["checkpoints"][0]["checkpoint_id"], 42);
    let unknown = value(body(Fault::UnknownFields).await);
    assert!(unknown.get("sim_extra").is_some());
    let all = unknown["checkpoints"].as_array().unwrap();
    assert!(all.len() == 2 && all.iter().all(|c| c.get("sim_extra").is_some()));
    let duplicated = value(body(Fault::DuplicateId).await);
    let ids = field(duplicated["checkpoints"].as_array().unwrap(), "id");
    assert!(ids.len() == 3 && ids[0] == ids[1] && ids[1] != ids[2]);
    assert_eq!(value(body(Fault::Empty).await), json!({"checkpoints": []}));
    assert_eq!(value(body(Fault::NotJsonObject).await), json!([]));
    assert_eq!(listing(&sim, &query).await.len(), 2);
}

#[tokio::test]
async fn delay_trips_client_timeouts_then_answers() {
    let sim = SimApi::start(None).await.unwrap();
    sim.handle()
        .push_fault(Fault::Delay(Duration::from_millis(500)));
    let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
    let client = reqwest::Client::new();
    let error = client
        .get(&url)
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    sim.handle()
        .push_fault(Fault::Delay(Duration::from_millis(20)));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn huge_streams_without_content_length() {
    let sim = SimApi::start(None).await.unwrap();
    sim.handle().push_fault(Fault::Huge(1 << 40));
    let mut response = get(&sim, &[("run_id", "r")]).await;
    assert!(response.content_length().is_none());
    let mut read = 0;
    while read < 4 << 20 {
        let chunk = response.chunk().await.unwrap();
        read += chunk.expect("the body keeps going").len();
    }
    // A small one ends exactly where it says.
    sim.handle().push_fault(Fault::Huge(100_000));
    let body = get(&sim, &[("run_id", "r")]).await.bytes().await.unwrap();
    assert_eq!(body.len(), 100_000);
    assert!(body.starts_with(b"{\"checkpoints\": ["));
    // The first response is still open and unread: shutdown must not wait for it.
    let shutdown = tokio::time::timeout(Duration::from_secs(5), sim.shutdown());
    shutdown.await.expect("shutdown is bounded");
    drop(response);
}

#[tokio::test]
async fn close_connection_is_a_transport_error() {
    let sim = SimApi::start(None).await.unwrap();
    sim.handle().push_fault(Fault::CloseConnection);
    // No response at all: hyper aborts before it flushes the head.
    let error = get_with(&sim, &[("run_id", "r")], None).await.unwrap_err();
    assert!(error.is_request(), "{error:?}");
    assert_eq!(get(&sim, &[("run_id", "r")]).await.status(), 200);
}

#[tokio::test]
async fn one_shot_faults_come_before_the_sticky_one() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    handle.add_checkpoint("r", "sampler", "step-1", None);
    handle.set_fault(Some(Fault::Status {
        code: 500,
        retry_after: None,
        body: None,
    }));
    handle.push_fault(Fault::Empty);
    handle.push_fault(Fault::NotJsonObject);
    let query = [("run_id", "r")];
    assert_eq!(
        json_of(get(&sim, &query).await).await,
        json!({"checkpoints": []})
    );
    assert_eq!(json_of(get(&sim, &query).await).await, json!([]));
    assert_eq!(get(&sim, &query).await.status(), 500);
    assert_eq!(get(&sim, &query).await.status(), 500);
    handle.set_fault(None);
    assert_eq!(listing(&sim, &query).await.len(), 1);
    assert_eq!(handle.requests(), 5);
}

#[tokio::test]
async fn faults_target_their_route() {
    let sim = SimApi::start(None).await.unwrap();
    let handle = sim.handle();
    handle.add_checkpoint("r", "sampler", "step-1", None);
    handle.push_fault_to(Route::Checkpoints, Fault::Empty);
    handle.set_fault_on(Route::Checkpoints, Some(Fault::NotJsonObject));
    let query = [("run_id", "r")];
    assert_eq!(
        json_of(get(&sim, &query).await).await,
        json!({"checkpoints": []})
    );
    assert_eq!(json_of(get(&sim, &query).await).await, json!([]));
    // `set_fault` is the same route's sticky fault.
    handle.set_fault(None);
    assert_eq!(listing(&sim, &query).await.len(), 1);
}

#[tokio::test]
async fn other_paths_and_methods_get_json_errors() {
    let sim = SimApi::start(None).await.unwrap();
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/v1/other", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["code"], "NOT_FOUND");
    let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
    let response = client.post(url).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    assert_eq!(json_of(response).await["code"], "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = SimApi::start(None).await.unwrap();
    let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    sim.shutdown().await;
    assert!(reqwest::get(&url).await.unwrap_err().is_connect());
}

/// A request to one of the routes beside the listing: (status, JSON body).
async fn call(sim: &SimApi, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/v1/loops/checkpoints/{path}", sim.base_url());
    let client = reqwest::Client::new();
    let request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

#[tokio::test]
async fn source_is_s3_until_made_a_volume() {
    let sim = SimApi::start(None).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r", "sampler", "step-1", None);
    let (status, body) = call(&sim, "GET", &format!("{id}/source"), None).await;
    assert_eq!((status, body), (200, json!({"source": {"kind": "s3"}})));
    h.set_volume(&id, "bdn:team/loops:v3", "r/step-1");
    let (_, body) = call(&sim, "GET", &format!("{id}/source"), None).await;
    assert_eq!(
        body,
        json!({"source": {"kind": "volume", "volume_ref": "bdn:team/loops:v3", "path": "r/step-1"}})
    );
    let (status, body) = call(&sim, "GET", &format!("{id}/files?page_size=10"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"]["reason"], "NOT_PRESIGNABLE");
    let (status, _) = call(&sim, "GET", "nope/source", None).await;
    assert_eq!(status, 404);
    assert_eq!(h.requests_to(Route::Source), 3);
    assert_eq!(h.requests_to(Route::Files), 1);
    assert_eq!(h.requests(), 0, "the listing's count is its own");
}

#[tokio::test]
async fn files_are_paged_and_follow_the_checkpoint() {
    let sim = SimApi::start(None).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r", "sampler", "step-1", Some("SYNCING"));
    let page = async |q: &str| call(&sim, "GET", &format!("{id}/files?{q}"), None).await;
    let (status, body) = page("page_size=1000&page_token=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["total_count"], 1, "only the config while syncing");
    assert_eq!(body["next_page_token"], Value::Null);
    let file = &body["presigned_urls"][0];
    for key in [
        "url",
        "relative_file_name",
        "node_rank",
        "size_bytes",
        "last_modified",
    ] {
        assert!(!file[key].is_null(), "{key}");
    }
    h.set_status(&id, Some("COMPLETE"));
    let whole: u64 = h.files(&id).iter().map(|f| f.size_bytes).sum();
    assert_eq!(whole, 1 << 27, "complete: the files add up to size_bytes");

    h.set_files(&id, &[("a", 1), ("b", 2), ("c", 3)]);
    h.put_file(&id, "d", 4);
    h.put_file(&id, "a", 10);
    let (_, first) = page("page_size=3&page_token=0").await;
    assert_eq!(first["total_count"], 4);
    assert_eq!(first["next_page_token"], 1);
    assert_eq!(first["presigned_urls"][0]["size_bytes"], 10);
    let (_, second) = page("page_size=3&page_token=1").await;
    assert_eq!(second["presigned_urls"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_page_token"], Value::Null);
    assert_eq!(page("page_size=0").await.0, 422);
    assert_eq!(page("page_token=x").await.0, 422);
}

#[tokio::test]
async fn a_null_status_run_grows_its_files_and_never_sets_sync_status() {
    let sim = SimApi::start(None).await.unwrap();
    let h = sim.handle();
    let minute = Duration::from_secs(60);
    h.start_null_status_run("n", "m", minute, minute, Some(1));
    h.advance_clock(minute + Duration::from_secs(1));
    let listed = listing(&sim, &[("run_id", "n")]).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|c| c["sync_status"].is_null()));
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let size = listed[0]["size_bytes"].as_u64().unwrap();
    let total = |h: &super::SimHandle| h.files(&id).iter().map(|f| f.size_bytes).sum::<u64>();
    assert!(total(&h) < size);
    h.advance_clock(minute);
    assert_eq!(total(&h), size);
    assert!(listing(&sim, &[("run_id", "n")]).await[0]["sync_status"].is_null());
}

#[tokio::test]
async fn validate_and_deploy_check_their_bodies_and_record_deploys() {
    let sim = SimApi::start(None).await.unwrap();
    let h = sim.handle();
    let sampler = h.add_checkpoint("r", "sampler", "step-1", Some("COMPLETE"));
    let trainer = h.add_checkpoint("r", "trainer", "step-1", Some("COMPLETE"));
    let path = "bt://loops:r/sampler_weights/step-1";
    let ok = call(
        &sim,
        "POST",
        "validate",
        Some(json!({"checkpoint_path": path})),
    )
    .await;
    assert_eq!(ok, (200, json!({})));
    let with_run = json!({"checkpoint_path": path, "run_id": "r"});
    assert_eq!(call(&sim, "POST", "validate", Some(with_run)).await.0, 200);
    for (body, status) in [
        (json!({}), 422),
        (
            json!({"checkpoint_path": "bt://loops:r/weights/step-1"}),
            400,
        ),
        (
            json!({"checkpoint_path": "bt://loops:r/sampler_weights/step-9"}),
            404,
        ),
        (json!({"checkpoint_path": "s3://x"}), 422),
        (json!({"checkpoint_path": path, "run_id": 7}), 422),
    ] {
        let (got, answer) = call(&sim, "POST", "validate", Some(body.clone())).await;
        assert_eq!(got, status, "{body}");
        assert!(answer["details"]["reason"].is_string(), "{answer}");
    }

    let good = json!({"checkpoint_ids": [sampler], "model_name": "m",
        "instance_type_id": "H100", "hf_secret_name": "hf"});
    let (status, answer) = call(&sim, "POST", "deploy", Some(good.clone())).await;
    assert_eq!(status, 200);
    assert!(answer["model_id"].is_string() && answer["deployment_id"].is_string());
    let bad = |patch: Value| {
        let mut body = good.clone();
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        body
    };
    for (body, status) in [
        (bad(json!({"checkpoint_ids": []})), 422),
        (bad(json!({"checkpoint_ids": "x"})), 422),
        (bad(json!({"checkpoint_ids": ["nope"]})), 404),
        (bad(json!({"checkpoint_ids": [trainer]})), 400),
        (bad(json!({"model_name": ""})), 422),
        (bad(json!({"hf_secret_name": null})), 422),
        (bad(json!({"instance_type_id": 1})), 422),
    ] {
        assert_eq!(
            call(&sim, "POST", "deploy", Some(body.clone())).await.0,
            status,
            "{body}"
        );
    }
    let (_, again) = call(&sim, "POST", "deploy", Some(good)).await;
    let deploys = h.deploys();
    assert_eq!(deploys.len(), 2, "every accepted call deploys");
    assert_eq!(deploys[0].checkpoint_ids, [sampler]);
    assert_eq!(
        deploys[0].model_id, deploys[1].model_id,
        "same model, updated"
    );
    assert_ne!(deploys[0].deployment_id, deploys[1].deployment_id);
    assert_eq!(again["deployment_id"], json!(deploys[1].deployment_id));
    assert_eq!(h.requests_to(Route::Deploy), 9);
    let (status, _) = call(&sim, "GET", "deploy", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn faults_apply_to_every_route() {
    let sim = SimApi::start(Some("k".into())).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r", "sampler", "step-1", Some("COMPLETE"));
    let authed = |path: String| {
        reqwest::Client::new()
            .get(format!("{}/v1/loops/checkpoints/{path}", sim.base_url()))
            .header("authorization", "Bearer k")
            .send()
    };
    assert_eq!(authed(format!("{id}/source")).await.unwrap().status(), 200);
    h.push_fault_to(
        Route::Source,
        Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        },
    );
    assert_eq!(authed(format!("{id}/source")).await.unwrap().status(), 503);
    h.push_fault_to(Route::Files, Fault::MissingField("size_bytes".into()));
    let body = json_of(authed(format!("{id}/files")).await.unwrap()).await;
    assert!(body["presigned_urls"][0].get("size_bytes").is_none());
    h.push_fault_to(Route::Files, Fault::MissingField("total_count".into()));
    let body = json_of(authed(format!("{id}/files")).await.unwrap()).await;
    assert!(body.get("total_count").is_none());
    h.push_fault_to(Route::Source, Fault::WrongType("kind".into()));
    let body = json_of(authed(format!("{id}/source")).await.unwrap()).await;
    assert_eq!(body["source"]["kind"], 42);
    h.push_fault_to(Route::Deploy, Fault::Html);
    let (status, _) = {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/loops/checkpoints/deploy", sim.base_url()))
            .body("{}")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 502);
    assert!(h.deploys().is_empty());
    assert_eq!(
        authed(format!("{id}/source")).await.unwrap().status(),
        200,
        "one-shot"
    );
    let unauthed = reqwest::get(format!(
        "{}/v1/loops/checkpoints/{id}/files",
        sim.base_url()
    ));
    assert_eq!(unauthed.await.unwrap().status(), 401);
}

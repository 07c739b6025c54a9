//! The status page (`/`, `/targets/NAME`) and `/api/v1/status`, served by the real daemon
//! against the simulated Loops API: targets and their polls, a dead delivery with the
//! command that replays it, each delivery's attempts, hostile checkpoint names shown as
//! text, no secret anywhere; on SQLite, and on PostgreSQL replicas (`--ignored`, under
//! `scripts/with-postgres`), where every replica shows the database-wide picture and which
//! targets it owns. `tests/browser/status_page.py` drives the same world in Chromium
//! (`scripts/browser`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use common::{
    API_KEY, Daemon, Env, QWEN, Receiver, SECRET, edit, hook_sink, http_get, pg, set_store_url,
    until,
};
use loopwatch::sim::{Fault, Route};
use loopwatch::text::shell_word;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
/// The dead-end sink's header token, echoed back in its error bodies.
const TOKEN: &str = "tok-9f8e7d6c5b4a3210";
/// A token in the dead-end sink's URL path, and a password in its userinfo.
const PATH_SECRET: &str = "pathsecret77aa";
const URL_PASSWORD: &str = "pw-secret-1234";
pub const HOSTILE: &str = "<script>alert(1)</script>";
const CONTROL: &str = "step-\u{1b}[31mred";

/// A receiver that refuses everything with 410 (dead at once) and echoes the request's
/// `authorization` header in its body: the daemon keeps that body as the error.
async fn echo_410() -> String {
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            axum::http::StatusCode::GONE,
            format!("gone; you sent authorization: {auth}"),
        )
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("127.0.0.1:{}", addr.port())
}

/// Every secret of the world: none may reach the page or the API.
fn secrets() -> Vec<String> {
    let b64 = SECRET.trim_start_matches("whsec_").to_string();
    vec![
        TOKEN.into(),
        PATH_SECRET.into(),
        URL_PASSWORD.into(),
        SECRET.into(),
        b64,
        API_KEY.into(),
    ]
}

/// `qwen` (run-1) and `llama` (run-2); sinks `dead-end` (410 with the token echoed) and
/// `hook` (a receiver answering 204).
pub fn sinks(echo: &str, rx: &Receiver) -> String {
    let dead = format!(
        "[[sinks]]\nname = \"dead-end\"\nurl = \"http://user:{URL_PASSWORD}@{echo}/hooks/{PATH_SECRET}\"\n\
         secret_env = \"HOOK_SECRET\"\nevents = [\"checkpoint.completed\"]\n\
         headers = {{ Authorization = \"Bearer ${{HOOK_TOKEN}}\" }}\n"
    );
    format!(
        "{QWEN}[[targets]]\nname = \"llama\"\nrun_id = \"run-2\"\n{dead}{}",
        hook_sink("hook", &rx.url, "")
    )
}

async fn get_json(url: &str) -> Value {
    let (code, body) = http_get(url).await;
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The world after its events: a baseline, then a hostile completed checkpoint (dead at
/// `dead-end`, delivered to `hook`) and a syncing one with a control character.
async fn make_events(env: &Env, addr: &str) {
    let sim = env.sim.handle();
    sim.add_checkpoint("run-1", "sampler", HOSTILE, Some("COMPLETE"));
    sim.add_checkpoint("run-1", "sampler", CONTROL, Some("SYNCING"));
    let url = format!("http://{addr}/api/v1/status");
    let done = until(T, Duration::from_millis(100), async || {
        let v = get_json(&url).await;
        let dead_end = v["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "dead-end")
            .cloned()
            .unwrap_or_default();
        dead_end["dead"] == 1 && v["summary"]["pending_deliveries"] == 0
    })
    .await;
    assert!(
        done,
        "the dead delivery never showed: {}",
        get_json(&url).await
    );
}

fn assert_no_secret(what: &str, text: &str) {
    for s in secrets() {
        assert!(!text.contains(&s), "{what} shows the secret {s:?}");
    }
}

/// The SQLite world, with the daemon ready and the events made.
pub struct World {
    pub env: Env,
    pub rx: Receiver,
    pub cfg: PathBuf,
    pub daemon: Daemon,
    pub addr: String,
}

pub async fn sqlite_world() -> World {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let echo = echo_410().await;
    env.sim
        .handle()
        .add_checkpoint("run-1", "sampler", "step-1", Some("COMPLETE"));
    let cfg = env.write_config(&sinks(&echo, &rx));
    let daemon = env.spawn_daemon_env(&cfg, &[("HOOK_TOKEN", TOKEN)]);
    let addr = daemon.ready().await;
    make_events(&env, &addr).await;
    World {
        env,
        rx,
        cfg,
        daemon,
        addr,
    }
}

#[tokio::test]
async fn the_status_page_and_api_show_targets_a_dead_delivery_to_replay_and_escaped_names() {
    let w = sqlite_world().await;
    let base = format!("http://{}", w.addr);
    let v = get_json(&format!("{base}/api/v1/status")).await;
    assert_no_secret("/api/v1/status", &v.to_string());
    // Milliseconds, as every other time of the page (it carried nanoseconds).
    let at = v["generated_at"].as_str().unwrap();
    let fraction = at.trim_end_matches('Z').split('.').nth(1).unwrap_or("");
    assert!(at.ends_with('Z') && fraction.len() <= 3, "{at}");
    assert_eq!(v["replica"]["store"], "sqlite");
    assert_eq!(v["replica"]["owned_targets"], 2);
    assert_eq!(v["summary"]["configured_targets"], 2);
    assert_eq!(v["summary"]["dead_deliveries"], 1);
    assert_eq!(v["targets"]["total"], 2);

    let qwen = &v["targets"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "qwen")
        .unwrap()
        .clone();
    assert_eq!(qwen["filter"], "run_id=run-1");
    assert_eq!(qwen["owned_here"], true);
    assert_eq!(qwen["poll"]["seen_here"], true);
    assert_eq!(qwen["poll"]["failing"], false);
    assert!(qwen["poll"]["last_success_at"].is_string());
    assert_eq!(qwen["checkpoints"]["complete"], 2, "{qwen}");
    assert_eq!(qwen["checkpoints"]["syncing"], 1, "{qwen}");
    assert_eq!(qwen["newest_completed"]["name"], HOSTILE);
    assert_eq!(qwen["detail"], "/targets/qwen");

    let dead_end = v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dead-end")
        .unwrap()
        .clone();
    assert!(
        dead_end["destination"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "only scheme, host and port: {dead_end}"
    );
    // Each line names the config file the daemon read, to run as is from anywhere.
    let c = format!(" -c {}", shell_word(&w.cfg.display().to_string()));
    assert_eq!(
        dead_end["replay_command"],
        format!("loopwatch deliveries redeliver --dead --sink dead-end{c}")
    );
    assert_eq!(dead_end["last_error"]["status"], 410);
    assert_eq!(dead_end["last_error"]["outcome"], "dead");
    let err = dead_end["last_error"]["error"].as_str().unwrap();
    // Redacted where the outcome is recorded (the token only) or, before that, by the
    // page itself (the whole header value): either way the token is gone.
    assert!(
        err.contains("authorization: ") && err.contains("[redacted]"),
        "the echoed token is redacted: {err}"
    );

    let dead = &v["dead_deliveries"][0];
    assert_eq!(dead["checkpoint_name"], HOSTILE);
    assert_eq!(dead["sink"], "dead-end");
    let id = dead["id"].as_i64().unwrap();
    assert_eq!(
        dead["replay_command"],
        format!("loopwatch deliveries redeliver {id}{c}")
    );
    let events: Vec<&Value> = v["events"].as_array().unwrap().iter().collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "checkpoint.completed" && e["checkpoint_name"] == HOSTILE)
    );
    assert!(
        events
            .iter()
            .any(|e| e["checkpoint_name"] == "step-\\u{1b}[31mred"),
        "control characters shown escaped: {events:?}"
    );

    // The page: the same facts as HTML, every upstream string escaped.
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    assert_no_secret("/", &html);
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped hostile name"
    );
    assert!(!html.contains("<script"), "no script element at all");
    assert!(html.contains("step-\\u{1b}[31mred"));
    assert!(!html.contains('\u{1b}'));
    assert!(html.contains(&format!(
        "loopwatch deliveries redeliver --dead --sink dead-end{c}"
    )));
    assert!(html.contains(&format!("loopwatch deliveries redeliver {id}{c}")));
    assert!(html.contains("href=\"/targets/qwen\""));

    // One target's history: the dead delivery's attempt with its status, duration and
    // (redacted) error; the delivered one's 204.
    let d = get_json(&format!("{base}/api/v1/targets/qwen")).await;
    assert_no_secret("/api/v1/targets/qwen", &d.to_string());
    assert_eq!(d["configured"], true);
    let hostile = d["checkpoints"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == HOSTILE)
        .unwrap()
        .clone();
    assert_eq!(hostile["state"], "complete");
    let completed = hostile["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "checkpoint.completed")
        .unwrap()
        .clone();
    let deliveries = completed["deliveries"].as_array().unwrap();
    let to = |sink: &str| {
        deliveries
            .iter()
            .find(|x| x["sink"] == sink)
            .unwrap()
            .clone()
    };
    let dead = to("dead-end");
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["attempts"], 1);
    let attempts = dead["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{dead}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status"], 410);
    assert_eq!(attempts[0]["outcome"], "dead");
    assert!(attempts[0]["duration_ms"].as_i64().unwrap() >= 0);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("[redacted]")
    );
    let ok = to("hook");
    assert_eq!(ok["status"], "delivered");
    assert_eq!(ok["attempt_log"][0]["status"], 204);
    let page = http_get(&format!("{base}/targets/qwen")).await;
    assert_eq!(page.0, 200);
    assert_no_secret("/targets/qwen", &page.1);
    assert!(page.1.contains("410") && !page.1.contains("<script"));

    // Bounded and read-only: a page of one target; no such target; no POST.
    let one = get_json(&format!("{base}/api/v1/status?limit=1&offset=1")).await;
    assert_eq!(one["targets"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["targets"]["total"], 2);
    assert_eq!(http_get(&format!("{base}/targets/nope")).await.0, 404);
    // A query that does not parse: 400 saying so, as JSON from the API, as HTML from the page.
    let (code, body) = http_get(&format!("{base}/api/v1/status?limit=abc")).await;
    assert_eq!(code, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("limit"), "{err}");
    let (code, body) = http_get(&format!("{base}/?offset=-1")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("<html") && body.contains("offset"), "{body}");
    let post = reqwest::Client::new()
        .post(format!("{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    // A failing target comes first, with its error.
    w.env.sim.handle().set_fault_on(
        Route::Checkpoints,
        Some(Fault::Status {
            code: 500,
            retry_after: None,
            body: Some(format!("upstream broke for {API_KEY}")),
        }),
    );
    let url = format!("{base}/api/v1/status");
    let failing = until(T, Duration::from_millis(100), async || {
        get_json(&url).await["summary"]["failing_targets"] == 2
    })
    .await;
    assert!(failing, "{}", get_json(&url).await);
    let v = get_json(&url).await;
    assert_no_secret("a failing poll's error", &v.to_string());
    let first = &v["targets"]["items"][0];
    assert_eq!(first["poll"]["failing"], true);
    assert!(
        first["poll"]["last_error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let html = http_get(&format!("{base}/")).await.1;
    assert!(html.contains("failing"));
    drop(w.daemon);
    drop(w.rx);
}

/// Spec §9: each sink's backlog "with the CLI line that replays it". A sink with nothing
/// dead still shows it, page and JSON (it was null, and the page showed no line).
#[tokio::test]
async fn every_sink_shows_the_line_that_replays_it_with_or_without_dead_deliveries() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        hook_sink("hook", &rx.url, ""),
        hook_sink("it's quoted", &rx.url, "")
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    let v = get_json(&format!("http://{addr}/api/v1/status")).await;
    let c = format!(" -c {}", shell_word(&cfg.display().to_string()));
    let sinks = v["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 2, "{v}");
    let html = http_get(&format!("http://{addr}/")).await.1;
    for (name, word) in [("hook", "hook"), ("it's quoted", r"'it'\''s quoted'")] {
        let sink = sinks.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(sink["dead"], 0, "{sink}");
        let line = format!("loopwatch deliveries redeliver --dead --sink {word}{c}");
        assert_eq!(sink["replay_command"], line.as_str(), "{sink}");
        // HTML-escaped as the page writes text.
        let shown = line.replace('\'', "&#39;").replace('"', "&#34;");
        assert!(html.contains(&shown), "{name}: no `{shown}` on the page");
    }
    drop(d);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn on_postgres_every_replica_shows_the_whole_database_and_which_targets_it_owns() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let echo = echo_410().await;
    env.sim
        .handle()
        .add_checkpoint("run-1", "sampler", "step-1", Some("COMPLETE"));
    let cfg = env.write_config(&sinks(&echo, &rx));
    set_store_url(&cfg, &pg::fresh_database().await, "\nlease_ttl = \"3s\"");
    edit(&cfg, |t| {
        t.replace("interval = \"200ms\"", "interval = \"1s\"")
    });
    let a = env.spawn_daemon_env(
        &cfg,
        &[
            ("HOOK_TOKEN", TOKEN),
            ("LOOPWATCH__STORE__REPLICA_ID", "r-a"),
        ],
    );
    let b = env.spawn_daemon_env(
        &cfg,
        &[
            ("HOOK_TOKEN", TOKEN),
            ("LOOPWATCH__STORE__REPLICA_ID", "r-b"),
        ],
    );
    let addrs = [a.addr().await, b.addr().await];
    // One target each, once the lease rounds settle.
    let split = until(Duration::from_secs(60), Duration::from_millis(300), async || {
        let mut owned = Vec::new();
        for addr in &addrs {
            owned.push(get_json(&format!("http://{addr}/api/v1/status")).await["replica"]["owned_targets"].clone());
        }
        owned == [1, 1]
    })
    .await;
    assert!(split, "the replicas never split the two targets");
    make_events(&env, &addrs[0]).await;

    let mut owners = Vec::new();
    for (addr, me) in addrs.iter().zip(["r-a", "r-b"]) {
        let v = get_json(&format!("http://{addr}/api/v1/status")).await;
        assert_no_secret("/api/v1/status on postgres", &v.to_string());
        assert_eq!(v["replica"]["store"], "postgres");
        assert_eq!(v["replica"]["id"], me);
        let ids: Vec<&str> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["r-a", "r-b"], "both replicas listed on {me}");
        // The database-wide picture: the same backlog and events on both.
        assert_eq!(v["summary"]["dead_deliveries"], 1, "on {me}");
        assert_eq!(v["summary"]["stored_targets"], 2, "on {me}");
        assert!(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["checkpoint_name"] == HOSTILE)
        );
        let mut mine = Vec::new();
        for t in v["targets"]["items"].as_array().unwrap() {
            let owner = t["owner"]
                .as_str()
                .expect("every target has a lease holder");
            assert_eq!(t["owned_here"], owner == me, "{t}");
            if owner == me {
                mine.push(t["name"].as_str().unwrap().to_string());
                assert_eq!(t["poll"]["seen_here"], true, "{t}");
            }
        }
        assert_eq!(mine.len(), 1, "{me} owns one target: {v}");
        owners.extend(mine);
        let html = http_get(&format!("http://{addr}/")).await.1;
        assert!(html.contains("Replicas") && html.contains("(this one)"));
        assert_no_secret("/ on postgres", &html);
        let d = get_json(&format!("http://{addr}/api/v1/targets/qwen")).await;
        let hostile = d["checkpoints"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == HOSTILE)
            .cloned()
            .unwrap();
        let dead_attempts = hostile["events"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["deliveries"].as_array().unwrap())
            .find(|x| x["sink"] == "dead-end")
            .unwrap()["attempt_log"]
            .clone();
        assert_eq!(dead_attempts[0]["status"], 410, "{d}");
    }
    owners.sort();
    assert_eq!(owners, ["llama", "qwen"]);
    drop((a, b, rx));
}

/// The page in Debian's headless Chromium over WebDriver: `tests/browser/status_page.py`
/// checks the targets, the dead delivery and its replay line, the hostile name as text and
/// no secret in the DOM, and saves screenshots under `target/browser/`. Run by
/// `scripts/browser`, which installs Chromium, chromedriver and Selenium.
#[tokio::test]
#[ignore = "needs Chromium, chromedriver and Selenium: run scripts/browser"]
async fn browser_status_page() {
    let python = std::env::var("LOOPWATCH_BROWSER_PYTHON")
        .expect("LOOPWATCH_BROWSER_PYTHON: run scripts/browser, which sets it up");
    let w = sqlite_world().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let browse = async |extra: &[&str]| {
        let out = tokio::process::Command::new(&python)
            .arg(root.join("tests/browser/status_page.py"))
            .args(["--url", &format!("http://{}", w.addr)])
            .args(["--hostile", HOSTILE])
            .args(extra)
            .arg("--screenshot")
            .arg(root.join("target/browser"))
            .env("LOOPWATCH_BROWSER_SECRETS", secrets().join("\n"))
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(out.status.success(), "the browser checks failed:\n{text}");
        assert!(text.contains("every check passed"));
    };
    browse(&[]).await;

    // Then a gated deploy sink, added by a reload, and a new completed sampler
    // checkpoint: a deploy waiting for approval, with the line that approves it.
    edit(&w.cfg, |t| {
        format!(
            "{t}\n[[sinks]]\nname = \"gate\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\napproval = \"before_deploy\"\ntargets = [\"qwen\"]\n"
        )
    });
    w.daemon.signal("HUP");
    let url = format!("http://{}/api/v1/status", w.addr);
    assert!(
        until(T, Duration::from_millis(100), async || {
            get_json(&url).await["sinks"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "gate"))
        })
        .await,
        "the reload never added the gate sink"
    );
    w.env
        .sim
        .handle()
        .add_checkpoint("run-1", "sampler", "step-gated", Some("COMPLETE"));
    let mut waiting = None;
    assert!(
        until(T, Duration::from_millis(100), async || {
            let v = get_json(&url).await;
            waiting = v["deploys"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["stage"] == "awaiting_approval"))
                .map(|d| d["delivery_id"].to_string());
            waiting.is_some()
        })
        .await,
        "no deploy came to wait for approval"
    );
    browse(&["--approve", &waiting.unwrap()]).await;
}

/// Spec §9: "each deploy pipeline with its stage (§8) and the line that approves it". A
/// deploy waiting for approval stays listed, with its approve line, page and JSON,
/// however many pipelines settled after it: the page listed the newest 50 only, and 53
/// finished deploys of another sink pushed the waiting one (and its line) off.
#[tokio::test]
async fn a_deploy_awaiting_approval_stays_listed_behind_many_newer_finished_ones() {
    const FINISHED: usize = 53;
    let env = Env::new().await;
    let h = env.sim.handle();
    let deploy_sink = |name: &str, target: &str, extra: &str| {
        format!(
            "[[sinks]]\nname = \"{name}\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\nfollow = false\ntargets = [\"{target}\"]\n{extra}\n"
        )
    };
    let cfg = env.write_config(&format!(
        "{QWEN}[[targets]]\nname = \"llama\"\nrun_id = \"run-2\"\n{}{}",
        deploy_sink("gate", "qwen", "approval = \"before_deploy\""),
        deploy_sink(
            "fast",
            "llama",
            "latest_only = false\nmodel_name = \"{{ data.checkpoint.checkpoint_id }}\""
        ),
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    let url = format!("http://{addr}/api/v1/status");
    let gated = h.add_checkpoint("run-1", "sampler", "step-gated", Some("COMPLETE"));
    let waiting = async || -> Option<Value> {
        get_json(&url).await["deploys"]
            .as_array()?
            .iter()
            .find(|p| p["checkpoint_id"] == gated.as_str())
            .cloned()
    };
    assert!(
        until(T, Duration::from_millis(100), async || {
            waiting()
                .await
                .is_some_and(|p| p["stage"] == "awaiting_approval")
        })
        .await,
        "the gated deploy never waited: {}",
        get_json(&url).await
    );
    // Then many deploys of the other sink, all newer, all finished.
    for i in 0..FINISHED {
        h.add_checkpoint("run-2", "sampler", &format!("step-{i}"), Some("COMPLETE"));
    }
    let fast = async || {
        let out = env
            .run(&cfg, &["deploys", "--sink", "fast", "-o", "json"])
            .await;
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    assert!(
        until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let rows = fast().await;
                rows.len() == FINISHED && rows.iter().all(|r| r["stage"] == "deployed")
            }
        )
        .await,
        "the {FINISHED} deploys never finished: {:?}",
        fast().await
    );
    assert_eq!(h.deployments_of("step-0").len(), 1, "deployed on the API");

    let v = get_json(&url).await;
    let deploys = v["deploys"].as_array().unwrap();
    let p = waiting()
        .await
        .unwrap_or_else(|| panic!("the waiting deploy is not listed: {v}"));
    assert_eq!(p["stage"], "awaiting_approval", "{p}");
    assert_eq!(p["sink"], "gate");
    let id = p["delivery_id"].as_i64().unwrap();
    let c = shell_word(&cfg.display().to_string());
    let line = format!("loopwatch deliveries approve {id} --by \"${{USER:-$(id -un)}}\" -c {c}");
    assert_eq!(p["approve_command"], line.as_str(), "{p}");
    assert_eq!(deploys[0]["delivery_id"], id, "open pipelines first");
    assert_eq!(deploys.len(), 1 + 50, "then the newest 50 settled ones");
    assert!(deploys[1..].iter().all(|p| p["stage"] == "deployed"));
    assert_eq!(v["open_deploys_not_listed"], 0);

    let html = http_get(&format!("http://{addr}/")).await.1;
    assert!(
        html.contains(&format!("data-deploy=\"{id}\"")),
        "the waiting deploy is not on the page"
    );
    let shown = line.replace('"', "&#34;");
    assert!(html.contains(&shown), "no `{shown}` on the page");
    drop(d);
}

#[tokio::test]
async fn deploy_pipelines_show_their_stage_deployment_and_a_lost_answer_reconciled() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}[[sinks]]\nname = \"deploy\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\nmodel_name = \"qwen\"\nfollow_interval = \"200ms\"\nretry_schedule = [\"200ms\", \"200ms\"]\n"
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    // The API deploys but the answer is lost: the page shows the reconciled deploy.
    h.push_fault_to(
        loopwatch::sim::Route::Deploy,
        loopwatch::sim::Fault::ActThenClose,
    );
    h.set_status(&id, Some("COMPLETE"));
    let url = format!("http://{addr}/api/v1/status");
    let mut v = get_json(&url).await;
    for _ in 0..400 {
        if v["deploys"][0]["stage"] == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        v = get_json(&url).await;
    }
    let dep = &v["deploys"][0];
    assert_eq!(dep["stage"], "active", "{v}");
    assert_eq!(dep["deployment_status"], "ACTIVE");
    assert_eq!(dep["reconciled"], true);
    assert_eq!(dep["checkpoint_id"], id.as_str());
    assert_eq!(dep["approve_command"], Value::Null);
    let made = h.deployments_of("qwen");
    assert_eq!(dep["deployment_id"], made[0].id.as_str());
    let html = http_get(&format!("http://{addr}/")).await.1;
    assert!(html.contains("id=\"deploys\""), "{html}");
    assert!(html.contains(made[0].id.as_str()));
    assert!(html.contains("reconciled after a lost answer"));
    drop(d);
}

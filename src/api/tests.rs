//! The client's rate limit, URLs, error classification and error bodies, and every
//! route against the simulated API.

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
    // The keys the Loops SDK reads, in its order, and the shapes they come in.
    assert_eq!(error_message(br#"{"detail":"Not found"}"#), "Not found");
    assert_eq!(
        error_message(br#"{"error":"rate limited"}"#),
        "rate limited"
    );
    assert_eq!(
        error_message(br#"{"error":{"message":"quota","type":"x"}}"#),
        "quota"
    );
    assert_eq!(
        error_message(br#"{"message":null,"detail":[{"loc":["q"],"msg":"bad"}]}"#),
        r#"[{"loc":["q"],"msg":"bad"}]"#
    );
    assert_eq!(
        error_message(br#"{"message":"first","detail":"second"}"#),
        "first"
    );
    assert_eq!(error_message(br#"{"code":"X"}"#), r#"{"code":"X"}"#);
    assert_eq!(
        error_reason(br#"{"code":"BAD_REQUEST","details":{"reason":"NOT_PRESIGNABLE"}}"#)
            .as_deref(),
        Some(NOT_PRESIGNABLE)
    );
    assert_eq!(error_reason(br#"{"details":null}"#), None);
    assert_eq!(error_reason(b"<html></html>"), None);
}

#[test]
fn checkpoint_routes_sit_under_the_listing_with_the_id_encoded() {
    let cfg = ApiConfig {
        base_url: Url::parse("http://gw/loops-proxy").unwrap(),
        api_key: crate::config::Secret::new("k"),
        api_key_source: "test".into(),
        auth_scheme: AuthScheme::Bearer,
        timeout: Duration::from_secs(1),
        max_requests_per_second: 1.0,
        max_response_bytes: 1 << 20,
        max_buffered_bytes: 2 << 20,
    };
    let c = Client::new(&cfg).unwrap();
    assert_eq!(
        c.checkpoint_url("ck 1/x", "files").as_str(),
        "http://gw/loops-proxy/v1/loops/checkpoints/ck%201%2Fx/files"
    );
    assert_eq!(
        c.action_url("deploy").as_str(),
        "http://gw/loops-proxy/v1/loops/checkpoints/deploy"
    );
}

#[test]
fn classification() {
    let s = |code| Error::Status {
        code,
        retry_after: None,
        message: String::new(),
        reason: None,
        from_api: true,
    };
    assert!(s(503).is_transient() && s(429).is_transient() && Error::Timeout.is_transient());
    assert!(!s(401).is_transient() && s(401).needs_operator() && s(403).needs_operator());
    assert!(!Error::Decode(String::new()).is_transient());
    assert!(s(408).is_transient() && !s(400).is_transient() && !s(422).needs_operator());
    assert_eq!(Error::Timeout.code_label(), "timeout");
    assert_eq!(s(502).code_label(), "502");
    assert_eq!(Error::TooLarge(1).code_label(), "decode");
}

fn sim_config(sim: &crate::sim::SimApi) -> ApiConfig {
    ApiConfig {
        base_url: Url::parse(&sim.base_url()).unwrap(),
        api_key: crate::config::Secret::new("k"),
        api_key_source: "test".into(),
        auth_scheme: AuthScheme::Bearer,
        timeout: Duration::from_secs(5),
        max_requests_per_second: 1000.0,
        max_response_bytes: 1 << 20,
        max_buffered_bytes: 2 << 20,
    }
}

#[tokio::test]
async fn every_route_against_the_simulator() {
    let sim = crate::sim::SimApi::start(Some("k".into())).await.unwrap();
    let h = sim.handle();
    let c = Client::new(&sim_config(&sim)).unwrap();
    let id = h.add_checkpoint("r", "sampler", "step-1", Some("COMPLETE"));
    assert_eq!(c.source(&id).await.unwrap(), Source::S3);
    h.set_files(&id, &[("a", 1), ("b", 2), ("c", 3)]);
    let first = c.files_page(&id, 2, 0).await.unwrap();
    assert_eq!(
        (first.files.len(), first.next_page_token, first.total_count),
        (2, Some(1), 3)
    );
    let second = c.files_page(&id, 2, 1).await.unwrap();
    assert_eq!((second.files.len(), second.next_page_token), (1, None));
    c.validate("bt://loops:r/sampler_weights/step-1", Some("r"))
        .await
        .unwrap();
    let e = c
        .validate("bt://loops:r/weights/step-1", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Status { code: 400, .. }) && !e.is_transient(),
        "{e}"
    );
    assert_eq!(e.reason(), Some("NOT_A_SAMPLER_CHECKPOINT"));
    let request = DeployRequest {
        checkpoint_ids: vec![id.clone()],
        model_name: "m".into(),
        instance_type_id: "H100".into(),
        hf_secret_name: "hf".into(),
    };
    let deployed = c.deploy(&request).await.unwrap();
    assert_eq!(h.deploys()[0].deployment_id, deployed.deployment_id);
    h.set_volume(&id, "bdn:ns/v:t", "p");
    assert_eq!(
        c.source(&id).await.unwrap(),
        Source::Volume {
            volume_ref: "bdn:ns/v:t".into(),
            path: "p".into()
        }
    );
    let e = c.files_page(&id, 1000, 0).await.unwrap_err();
    assert!(e.is_not_presignable() && !e.is_transient(), "{e}");
    h.push_fault_to(crate::sim::Route::Deploy, crate::sim::Fault::Truncated);
    assert!(matches!(c.deploy(&request).await, Err(Error::Decode(_))));
    h.push_fault_to(
        crate::sim::Route::Validate,
        crate::sim::Fault::Status {
            code: 503,
            retry_after: Some("3".into()),
            body: None,
        },
    );
    let e = c
        .validate("bt://loops:r/sampler_weights/step-1", None)
        .await
        .unwrap_err();
    assert!(e.is_transient() && e.retry_after() == Some(Duration::from_secs(3)));
    // FastAPI's `detail` (no `message`): the message is read from it, as the SDK does.
    h.push_fault_to(
        crate::sim::Route::Files,
        crate::sim::Fault::Status {
            code: 422,
            retry_after: None,
            body: Some(
                r#"{"detail":"page_size must be at most 1000","details":{"reason":"INVALID"}}"#
                    .into(),
            ),
        },
    );
    let e = c.files_page(&id, 1000, 0).await.unwrap_err();
    assert_eq!(e.to_string(), "HTTP 422: page_size must be at most 1000");
    assert_eq!(e.reason(), Some("INVALID"));
}

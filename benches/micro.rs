//! micro: the per-item costs behind the macro figures (criterion; throughput is per
//! checkpoint or per event). The listing is the simulated API's own body for a run of 50
//! checkpoints, byte for byte what the fleet benchmark polls.
//!
//! `cargo bench --bench micro` (under `cargo test` each function runs once).

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loopwatch::api::wire::decode_listing;
use loopwatch::diff::{DiffOptions, DiffState, diff};
use loopwatch::model::{Checkpoint, TargetState};
use loopwatch::signing::{self as sign, SigningKey};
use loopwatch::sim::{CHECKPOINTS_PATH, SimApi};

const M: usize = 50;

/// The simulator's body for a run of `m` checkpoints with `status`.
fn body(m: usize, status: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = SimApi::start(None).await.unwrap();
        sim.handle().add_many("run-00000", m, Some(status));
        let url = format!("{}{CHECKPOINTS_PATH}?run_id=run-00000", sim.base_url());
        let b = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        sim.shutdown().await;
        b.to_vec()
    })
}

fn opts() -> DiffOptions {
    DiffOptions {
        emit_existing: false,
        delete_after_missing: 2,
        stalled_after: Some(TimeDelta::minutes(30)),
        probe_null: false,
    }
}

fn state_of(listing: &[Checkpoint]) -> TargetState {
    let mut s = TargetState::default();
    let d = diff("t", &s, listing, Utc::now(), &opts());
    s.apply(&d);
    s
}

fn decode(c: &mut Criterion) {
    let body = body(M, "COMPLETE");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(M as u64));
    g.bench_function("listing of 50 (per checkpoint)", |b| {
        b.iter(|| decode_listing(black_box(&body)).unwrap())
    });
    g.finish();
}

fn diffs(c: &mut Criterion) {
    let complete = decode_listing(&body(M, "COMPLETE")).unwrap();
    let state = state_of(&complete);
    let now = Utc::now();
    let mut g = c.benchmark_group("diff");
    g.throughput(Throughput::Elements(M as u64));
    g.bench_function("unchanged listing of 50 (per checkpoint)", |b| {
        b.iter(|| {
            let d = diff("t", black_box(&state), black_box(&complete), now, &opts());
            assert!(!d.writes());
            d
        })
    });
    // Every checkpoint completes: 50 `completed` events.
    let syncing: Vec<Checkpoint> = complete
        .iter()
        .cloned()
        .map(|mut c| {
            c.sync_status = Some("SYNCING".into());
            c.raw = c.raw.replace("COMPLETE", "SYNCING");
            c
        })
        .collect();
    let before = state_of(&syncing);
    g.bench_function("50 completions (per event)", |b| {
        b.iter(|| {
            let d = diff("t", black_box(&before), black_box(&complete), now, &opts());
            assert_eq!(d.events.len(), M);
            d
        })
    });
    g.finish();
}

fn signing(c: &mut Criterion) {
    let complete = decode_listing(&body(1, "SYNCING")).unwrap();
    let before = state_of(&complete);
    let mut done = complete.clone();
    done[0].sync_status = Some("COMPLETE".into());
    let d = diff("t", &before, &done, Utc::now(), &opts());
    let event = &d.events[0];
    let body = event.standard_body();
    let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("standard body (per event)", |b| {
        b.iter(|| black_box(event).standard_body())
    });
    g.bench_function(format!("sign v1 ({} B body)", body.len()), |b| {
        b.iter(|| {
            sign::signature_header(
                &[&key],
                None,
                &event.id,
                1_800_000_000,
                black_box(body.as_bytes()),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = decode, diffs, signing
}
criterion_main!(benches);

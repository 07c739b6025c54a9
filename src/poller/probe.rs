//! The readiness probe of null checkpoints (docs/events.md, "Readiness of null
//! checkpoints"): which tracked null checkpoints are due, `source` then `files` for each,
//! and what the probes saw, remembered with the target's rows. Every request goes through
//! the one API client (its token bucket and error classification) and is counted. A poll's
//! probes are bounded: [`MAX_PROBES_PER_POLL`] checkpoints and [`PROBE_REQUESTS_PER_POLL`]
//! requests, run at the same time for at most `api.timeout` in all, and one probe's paging
//! stops at a token it already sent or past what `total_count` allows, so a hostile, hung
//! or broken route can never spend the process's API budget or hold the poll for long
//! (other targets keep their cadence).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use futures_util::future::join_all;
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Poller;
use crate::api::{self, Endpoint, Source};
use crate::config::{NullStatus, TargetConfig};
use crate::diff;
use crate::metrics::ProbeOutcome;
use crate::model::{Checkpoint, FilesSeen, ProbeMemo, ReadyBy, TargetState, TrackedSet};

/// At most this many null checkpoints of one target are probed per poll (docs/events.md):
/// a target with many of them costs a bounded number of requests per poll, and the ones
/// probed longest ago go first, so every one gets its turn.
pub const MAX_PROBES_PER_POLL: usize = 8;
/// At most this many requests (`source` and `files` pages together) per poll of one
/// target: room for every due probe of an ordinary checkpoint (a source and a page or two
/// each), while a files route that pages without end costs a few seconds of the rate
/// limit, not minutes. A checkpoint whose files need more pages than this (over 31,000
/// files) is never found ready by its files.
pub const PROBE_REQUESTS_PER_POLL: usize = 32;
/// `page_size` of a probe's files requests.
pub const FILES_PAGE_SIZE: u32 = 1000;
/// Pages one probe reads at most, whatever `total_count` says (a million files).
const MAX_FILES_PAGES: usize = 1000;

/// What one readiness probe found.
enum Probed {
    Ready(ReadyBy),
    /// Not (yet) ready; what the files looked like, for the stable-listing rule.
    NotReady(Option<FilesSeen>),
    /// The files could not be read to their end (why): not ready yet.
    Unfinished(&'static str),
    Failed(api::Error),
}

/// The most pages a files listing of `total_count` files may take: one per
/// [`FILES_PAGE_SIZE`], and one more (a last page may come back empty).
fn pages_for(total_count: i64) -> usize {
    let pages = (total_count.max(0) as u64).div_ceil(u64::from(FILES_PAGE_SIZE));
    usize::try_from(pages)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

impl Poller {
    /// The readiness step (docs/events.md, "Readiness of null checkpoints"): probe the
    /// tracked null checkpoints that are due (at most one probe per `syncing_interval`
    /// each, at most [`MAX_PROBES_PER_POLL`], [`PROBE_REQUESTS_PER_POLL`] requests in
    /// all); the ones found ready feed the plan, and what was seen is remembered once the
    /// poll succeeds. A failure means "not yet" and only counts. Cut short by shutdown
    /// (what was probed so far still counts).
    pub(super) async fn probe(
        &self,
        t: &TargetConfig,
        state: &TargetState,
        listing: &[Checkpoint],
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> (diff::Ready, Vec<(String, ProbeMemo)>) {
        let mut ready = diff::Ready::new();
        let mut memos = Vec::new();
        if self.cfg().null_status != NullStatus::Probe {
            return (ready, memos);
        }
        let every = chrono::Duration::from_std(t.syncing_interval).unwrap_or(chrono::Duration::MAX);
        let mut due: Vec<(&Checkpoint, Option<&ProbeMemo>)> = listing
            .iter()
            .filter(|c| c.sync_status.is_none())
            .filter(|c| {
                state
                    .checkpoints
                    .get(&c.id)
                    .is_some_and(|p| !p.completed && !p.deleted)
            })
            .map(|c| (c, state.probes.get(c.id.as_str())))
            .filter(|(_, memo)| memo.is_none_or(|m| now - m.probed_at >= every))
            .collect();
        due.sort_by(|(a, ma), (b, mb)| {
            (ma.map(|m| m.probed_at), &a.created_at, &a.id).cmp(&(
                mb.map(|m| m.probed_at),
                &b.created_at,
                &b.id,
            ))
        });
        let m = self.metrics.target(&t.name);
        // The due probes run at once, sharing the poll's request budget, and for at most
        // `api.timeout` in all: a `source` that hangs holds this poll (its listing's events,
        // and with it the target's cadence) up by one timeout, not one per checkpoint.
        let budget = AtomicUsize::new(PROBE_REQUESTS_PER_POLL);
        let deadline = tokio::time::Instant::now() + self.client.timeout();
        let due: Vec<_> = due.into_iter().take(MAX_PROBES_PER_POLL).collect();
        let results = join_all(due.iter().map(|(c, memo)| async {
            tokio::select! {
                biased;
                // Cut short by shutdown: not probed (those done before still count).
                _ = cancel.cancelled() => None,
                p = timeout_at(deadline, self.probe_one(c, *memo, now, every, &budget)) => {
                    Some(p.unwrap_or(Probed::Unfinished("the poll's probes took api.timeout")))
                }
            }
        }))
        .await;
        for ((c, memo), probed) in due.into_iter().zip(results) {
            let Some(probed) = probed else { continue };
            let mut next = ProbeMemo {
                probed_at: now,
                files: memo.and_then(|m| m.files.clone()),
            };
            match probed {
                Probed::Ready(by) => {
                    m.probe(ProbeOutcome::Ready);
                    ready.insert(c.id.clone(), by);
                }
                Probed::NotReady(seen) => {
                    m.probe(ProbeOutcome::NotReady);
                    next.files = seen;
                }
                Probed::Failed(error) => {
                    m.probe(ProbeOutcome::Error);
                    debug!(target = %t.name, checkpoint_id = %c.id, %error,
                        "readiness probe failed; not ready yet, will probe again");
                }
                Probed::Unfinished(why) => {
                    m.probe(ProbeOutcome::NotReady);
                    debug!(target = %t.name, checkpoint_id = %c.id, why,
                        "readiness probe stopped; not ready yet, will probe again");
                }
            }
            memos.push((c.id.clone(), next));
        }
        (ready, memos)
    }

    /// Probe one null checkpoint: its source, then (s3) the pages of its files, each
    /// request taken from `budget`. Paging stops, "not ready yet", at a token already
    /// sent, after `ceil(total_count / page_size) + 1` pages (the first page's count), or
    /// when the budget is spent: an API that pages without end costs a bounded number of
    /// requests per poll, never the whole process's rate limit.
    async fn probe_one(
        &self,
        c: &Checkpoint,
        memo: Option<&ProbeMemo>,
        now: DateTime<Utc>,
        every: chrono::Duration,
        budget: &AtomicUsize,
    ) -> Probed {
        if !take(budget) {
            return Probed::Unfinished("the poll's probe request budget is spent");
        }
        let source = self.counted(Endpoint::Source, self.client.source(&c.id).await);
        match source {
            Err(e) => return Probed::Failed(e),
            Ok(Source::Volume { .. }) => return Probed::Ready(ReadyBy::Source),
            Ok(Source::Other(_)) => return Probed::NotReady(None),
            Ok(Source::S3) => {}
        }
        let (mut count, mut total, mut newest) = (0u64, 0i64, String::new());
        let mut token = 0;
        let mut sent = HashSet::from([token]);
        let mut max_pages = MAX_FILES_PAGES;
        let mut pages = 0;
        loop {
            if pages == max_pages {
                return Probed::Unfinished("more pages than total_count allows");
            }
            if !take(budget) {
                return Probed::Unfinished("the poll's probe request budget is spent");
            }
            pages += 1;
            let page = self.client.files_page(&c.id, FILES_PAGE_SIZE, token).await;
            let page = match self.counted(Endpoint::Files, page) {
                Ok(page) => page,
                Err(e) => return Probed::Failed(e),
            };
            if pages == 1 {
                max_pages = max_pages.min(pages_for(page.total_count));
            }
            for f in &page.files {
                count += 1;
                total = total.saturating_add(f.size_bytes.max(0));
                if later(&f.last_modified, &newest) {
                    newest.clone_from(&f.last_modified);
                }
            }
            match page.next_page_token {
                None => break,
                // A token sent before (the page's own, or a cycle) would page for ever.
                Some(next) if !sent.insert(next) => {
                    return Probed::Unfinished("next_page_token repeats a token already sent");
                }
                Some(next) => token = next,
            }
        }
        if c.size_bytes > 0 {
            return if total >= c.size_bytes {
                Probed::Ready(ReadyBy::Files)
            } else {
                Probed::NotReady(None)
            };
        }
        if count == 0 {
            return Probed::NotReady(None);
        }
        let seen = FilesSeen {
            count,
            total_bytes: total,
            newest,
            since: now,
        };
        match memo.and_then(|m| m.files.as_ref()) {
            Some(before)
                if (before.count, before.total_bytes, &before.newest)
                    == (seen.count, seen.total_bytes, &seen.newest) =>
            {
                if now - before.since >= every {
                    Probed::Ready(ReadyBy::Files)
                } else {
                    Probed::NotReady(Some(before.clone()))
                }
            }
            _ => Probed::NotReady(Some(seen)),
        }
    }

    /// Count a request other than the listing in `loopwatch_api_requests_total`.
    fn counted<T>(&self, endpoint: Endpoint, r: Result<T, api::Error>) -> Result<T, api::Error> {
        let code = match &r {
            Ok(_) => "200".to_string(),
            Err(e) => e.code_label(),
        };
        self.metrics.api_request(endpoint.label(), &code);
        r
    }
}

/// Take one request from a poll's probe budget; false when it is spent.
fn take(budget: &AtomicUsize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Whether a live checkpoint of the state is null and not complete: one the readiness
/// probe may still complete.
pub(super) fn awaits_probe(state: &TargetState) -> bool {
    state
        .checkpoints
        .values()
        .any(|t| !t.completed && !t.deleted && t.sync_status.is_none())
}

/// What the probes saw, kept for the checkpoints still waiting for readiness once the
/// poll's `checkpoints` are in: `old` with this poll's `probes` over it, the rest forgotten.
pub(super) fn remember_probes(
    old: &BTreeMap<CompactString, ProbeMemo>,
    checkpoints: &TrackedSet,
    probes: Vec<(String, ProbeMemo)>,
) -> BTreeMap<CompactString, ProbeMemo> {
    let mut next = old.clone();
    for (id, memo) in probes {
        next.insert(id.as_str().into(), memo);
    }
    next.retain(|id, _| {
        checkpoints
            .get(id)
            .is_some_and(|t| !t.completed && !t.deleted && t.sync_status.is_none())
    });
    next
}

/// The memos a commit writes to go from `old` to `new`: each probe's memo (when it was
/// probed, and the files the stable-listing rule needs), so a new process, a restart or
/// the next `loopwatch once`, probes no sooner than `syncing_interval` after it; and
/// `None` (forgotten) for a checkpoint that no longer waits. One row per probe, which the
/// API's rate limit bounds (a probe is one request or more); a poll that probes nothing
/// writes nothing here.
pub(super) fn probe_changes<'a>(
    old: &'a BTreeMap<CompactString, ProbeMemo>,
    new: &'a BTreeMap<CompactString, ProbeMemo>,
) -> Vec<(&'a str, Option<&'a ProbeMemo>)> {
    let changed = new
        .iter()
        .filter(|(id, m)| old.get(*id) != Some(*m))
        .map(|(id, m)| (id.as_str(), Some(m)));
    let forgotten = old
        .keys()
        .filter(|id| !new.contains_key(*id))
        .map(|id| (id.as_str(), None));
    changed.chain(forgotten).collect()
}

/// Whether `a` is a later `last_modified` than `b` (as times when both read as times).
fn later(a: &str, b: &str) -> bool {
    match (
        crate::model::parse_created_at(a),
        crate::model::parse_created_at(b),
    ) {
        (Some(a), Some(b)) => a > b,
        _ => a > b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit writes the memo of every probe (its time, and the files it saw or none),
    /// forgets one whose checkpoint no longer waits, and writes nothing for a checkpoint
    /// not probed in this poll.
    #[test]
    fn probe_changes_write_every_probe_and_forget_what_no_longer_waits() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let seen = |count, since| FilesSeen {
            count,
            total_bytes: 10,
            newest: "2026-11-26T00:00:00Z".into(),
            since: at(since),
        };
        let memo = |probed_at, files| ProbeMemo {
            probed_at: at(probed_at),
            files,
        };
        let map = |m: Vec<(&str, ProbeMemo)>| -> BTreeMap<CompactString, ProbeMemo> {
            m.into_iter().map(|(k, v)| (k.into(), v)).collect()
        };
        let old = map(vec![
            ("same", memo(1, Some(seen(1, 1)))),
            ("grew", memo(1, Some(seen(1, 1)))),
            ("done", memo(1, Some(seen(1, 1)))),
            ("done-bare", memo(1, None)),
            ("bare", memo(1, None)),
            ("emptied", memo(1, Some(seen(1, 1)))),
            ("not-probed", memo(1, None)),
        ]);
        let new = map(vec![
            ("same", memo(2, Some(seen(1, 1)))),
            ("grew", memo(2, Some(seen(2, 2)))),
            ("bare", memo(2, None)),
            ("emptied", memo(2, None)),
            ("first", memo(2, Some(seen(1, 2)))),
            ("first-bare", memo(2, None)),
            ("not-probed", memo(1, None)),
        ]);
        // (id, written: (probed_at, files counted) or forgotten)
        type Written<'a> = (&'a str, Option<(i64, Option<u64>)>);
        let mut got: Vec<Written> = probe_changes(&old, &new)
            .into_iter()
            .map(|(id, m)| {
                let m = m.map(|m| (m.probed_at.timestamp(), m.files.as_ref().map(|f| f.count)));
                (id, m)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("bare", Some((2, None))),
                ("done", None),
                ("done-bare", None),
                ("emptied", Some((2, None))),
                ("first", Some((2, Some(1)))),
                ("first-bare", Some((2, None))),
                ("grew", Some((2, Some(2)))),
                ("same", Some((2, Some(1)))),
            ]
        );
        assert!(probe_changes(&old, &old).is_empty());
    }

    #[test]
    fn a_files_listing_may_take_one_page_more_than_its_count_needs() {
        assert_eq!(pages_for(0), 1);
        assert_eq!(pages_for(-5), 1);
        assert_eq!(pages_for(1), 2);
        assert_eq!(pages_for(1000), 2);
        assert_eq!(pages_for(1001), 3);
        assert_eq!(
            pages_for(i64::MAX),
            usize::try_from(i64::MAX / 1000 + 2).unwrap()
        );
    }
}

//! One `/metrics` exposition, written a part at a time as the scraper reads it.
//!
//! With 10,000 models that have all served, an exposition is 55 MB. Built whole, it was one
//! buffer of that size per scrape, and the allocator kept 50-130 MiB of RSS after it. A
//! [`Scrape`] holds only the live pools and their escaped labels, and writes the next part
//! when the connection asks for more: what the scrape holds at once is a part or two, and a
//! scraper that goes away stops the work.
//!
//! A family's samples must follow its header, so each family is one pass over the pools. A
//! family's header is written with its first sample, so that a family without samples is left
//! out, as the client library leaves it out, wherever the parts are cut.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::exposition::{header, PoolLabels};
use super::latency::{self, Bounds, Names};
use super::pool_series::{self, Series};
use super::window::Which;
use super::PoolMetrics;

/// The families written from the pools, in order.
#[derive(Clone, Copy)]
enum Family {
    Series(Series, &'static str, &'static str, &'static str),
    Latency(Which, &'static str, &'static str, usize),
}

const FAMILIES: [Family; 8] = {
    let s = pool_series::FAMILIES;
    let l = latency::FAMILIES;
    [
        Family::Series(s[0].0, s[0].1, s[0].2, s[0].3),
        Family::Series(s[1].0, s[1].1, s[1].2, s[1].3),
        Family::Series(s[2].0, s[2].1, s[2].2, s[2].3),
        Family::Series(s[3].0, s[3].1, s[3].2, s[3].3),
        Family::Series(s[4].0, s[4].1, s[4].2, s[4].3),
        Family::Latency(l[0].2, l[0].0, l[0].1, 0),
        Family::Latency(l[1].2, l[1].0, l[1].1, 1),
        Family::Latency(l[2].2, l[2].0, l[2].1, 2),
    ]
};

/// An exposition being written: the client library's families first, then one pass over the
/// pools per family.
pub struct Scrape {
    /// The client library's families (canary verdicts), not yet handed out.
    head: Vec<u8>,
    /// The live pools, each with its labels escaped once per scrape.
    pools: Vec<(Arc<PoolMetrics>, PoolLabels)>,
    bounds: Arc<Bounds>,
    names: [Names; 3],
    /// Where the next part starts: a family, a pool, and whether the family's header is out.
    family: usize,
    pool: usize,
    header_out: bool,
}

impl Scrape {
    pub(super) fn new(head: Vec<u8>, pools: Vec<Arc<PoolMetrics>>, bounds: Arc<Bounds>) -> Self {
        let pools = pools
            .into_iter()
            .map(|p| {
                let l = PoolLabels::new(p.labels());
                (p, l)
            })
            .collect();
        let names = latency::FAMILIES.map(|(name, _, _)| Names::new(name));
        Scrape {
            head,
            pools,
            bounds,
            names,
            family: 0,
            pool: 0,
            header_out: false,
        }
    }

    /// Appends the next part of the exposition to `out`: pools until `out` holds at least
    /// `min` bytes, or to the end. Returns false when the exposition is complete.
    pub fn write(&mut self, out: &mut Vec<u8>, min: usize) -> bool {
        out.append(&mut self.head);
        while let Some(&family) = FAMILIES.get(self.family) {
            while let Some((p, l)) = self.pools.get(self.pool) {
                if out.len() >= min {
                    return true;
                }
                let start = out.len();
                match family {
                    Family::Series(series, name, ..) => {
                        pool_series::write_pool(series, name, p, l, out)
                    }
                    Family::Latency(which, .., i) => {
                        latency::write_pool(which, &self.names[i], p, l, &self.bounds, out)
                    }
                }
                if !self.header_out && out.len() > start {
                    // The family's first sample: its header goes before it (a few lines move).
                    let mut h = Vec::with_capacity(256);
                    header(&mut h, family.header());
                    out.splice(start..start, h);
                    self.header_out = true;
                }
                self.pool += 1;
            }
            self.family += 1;
            self.pool = 0;
            self.header_out = false;
        }
        false
    }
}

impl Family {
    fn header(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Series(_, name, help, kind) => (name, help, kind),
            Family::Latency(_, name, help, _) => (name, help, "histogram"),
        }
    }
}

/// A part's size: about 60 µs of writing with 10,000 served models. hyper queues up to 16
/// parts (at most about 400 kB) before it writes them to the socket.
const PART: usize = 32 * 1024;

/// Units of a task's cooperative budget (128 per poll) each part spends.
const BUDGET_PER_PART: usize = 32;

/// A [`Scrape`] as a response body.
pub struct ScrapeBody {
    scrape: Scrape,
    done: bool,
}

impl ScrapeBody {
    pub fn new(scrape: Scrape) -> Self {
        ScrapeBody {
            scrape,
            done: false,
        }
    }
}

impl http_body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        // hyper asks for parts for as long as the socket takes them, and a fast scraper's
        // socket takes them all: written in one poll, 55 MB would hold the admin listener's
        // thread for 100 ms. Each part spends a quarter of the budget tokio gives a task per
        // poll, so the task hands the thread back every four parts or so.
        for _ in 0..BUDGET_PER_PART {
            ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        }
        // A pool's histograms are about 8 kB: room for the last one past the part's size.
        let mut part = Vec::with_capacity(PART + 16 * 1024);
        self.done = !self.scrape.write(&mut part, PART);
        if part.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(part)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;
    use crate::metrics::{Metrics, UpstreamErrorKind};

    /// Pools with every kind of series, some without samples in some families.
    fn metrics() -> (Metrics, Vec<Arc<PoolMetrics>>) {
        let m = Metrics::new();
        let pools: Vec<_> = (0..30)
            .map(|i| m.pool(&format!("m{}", i % 4), "production", &format!("v{i}")))
            .collect();
        for (i, p) in pools.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            p.count_response(http::StatusCode::OK);
            p.stats.latency(Duration::from_micros(50 * i as u64));
            if i % 5 == 0 {
                p.stats.inter_chunk(Duration::from_millis(2));
            }
            p.count_error(UpstreamErrorKind::ALL[i % 5]);
        }
        m.count_verdict("m0", "production", "pass");
        (m, pools)
    }

    #[test]
    fn parts_of_any_size_add_up_to_the_whole_exposition() {
        let (m, _pools) = metrics();
        let whole = m.encode();
        for min in [1, 100, 1000, 7000, usize::MAX] {
            let mut scrape = m.scrape();
            let mut joined = Vec::new();
            let mut parts = 0;
            loop {
                let mut part = Vec::new();
                let more = scrape.write(&mut part, min);
                assert!(more || parts > 0 || min == usize::MAX || !part.is_empty());
                joined.extend_from_slice(&part);
                parts += 1;
                if !more {
                    break;
                }
            }
            assert_eq!(
                String::from_utf8_lossy(&joined),
                String::from_utf8_lossy(&whole),
                "parts of at least {min} bytes"
            );
            if min == 1 {
                // One pool per part (and the first families' headers).
                assert!(parts > 30 * 5, "{parts} parts");
            }
        }
        // No pool has recorded a first byte: that family is left out, wherever parts end.
        let text = String::from_utf8_lossy(&whole);
        assert!(!text.contains("switchyard_time_to_first_byte_seconds"));
        assert!(text.contains("# TYPE switchyard_inter_chunk_seconds histogram\n"));
    }

    /// `n` pools that have each served one request.
    fn served(n: usize) -> (Metrics, Vec<Arc<PoolMetrics>>) {
        let m = Metrics::new();
        let pools: Vec<_> = (0..n)
            .map(|i| m.pool("m", "production", &format!("v{i}")))
            .collect();
        for p in &pools {
            p.stats.latency(Duration::from_millis(3));
        }
        (m, pools)
    }

    #[tokio::test]
    async fn the_body_streams_the_exposition_in_parts() {
        let (m, _pools) = served(400);
        let whole = m.encode();
        assert!(whole.len() > 3 * PART, "{} bytes", whole.len());
        let mut body = ScrapeBody::new(m.scrape());
        let mut joined = Vec::new();
        let mut parts = 0;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map(Frame::into_data);
            let data = data.unwrap_or_default();
            assert!(
                data.len() < PART + 16 * 1024,
                "a part of {} bytes",
                data.len()
            );
            joined.extend_from_slice(&data);
            parts += 1;
        }
        assert!(http_body::Body::is_end_stream(&body));
        assert!(parts > 3, "{parts} parts");
        assert_eq!(joined, whole);
    }

    /// A scraper that takes every part at once still lets the thread's other tasks (`/readyz`,
    /// the API) run between parts.
    #[tokio::test(flavor = "current_thread")]
    async fn reading_a_scrape_hands_the_thread_to_other_tasks_every_few_parts() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (m, _pools) = served(1000);
        let turns = Arc::new(AtomicUsize::new(0));
        let other = tokio::spawn({
            let turns = turns.clone();
            async move {
                loop {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut body = ScrapeBody::new(m.scrape());
        let mut parts = 0;
        while body.frame().await.is_some() {
            parts += 1;
        }
        other.abort();
        let turns = turns.load(Ordering::Relaxed);
        assert!(parts > 40, "{parts} parts");
        assert!(
            turns >= parts / 5,
            "the other task ran {turns} times while {parts} parts were read"
        );
    }
}

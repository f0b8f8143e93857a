//! What canary analysis and live figures read: per-pool counters and latency histograms that
//! the request path bumps with relaxed atomics and the controller reads off the hot path.
//!
//! Counters are cumulative; a window is the difference of two [`StatsSnapshot`]s, so any number
//! of readers can keep their own windows (analysis intervals, dashboard figures) without the
//! request path knowing. Each pool's counters are sharded per worker thread and cache-line
//! aligned, so two cores serving the same deployment do not bounce one line between them. A
//! shard (8 kB) is allocated when its thread first records into the pool, so deployments
//! without traffic cost four pointers, and a proxy with two workers holds two shards per
//! deployment that served, not four.
//!
//! Histograms use log buckets with 8 sub-buckets per power of two of microseconds (values are
//! reported within ±6%), from 1 µs to 71 minutes: fixed memory, no allocation per sample.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^32 µs; larger ones land in the last bucket.
const MAX_EXP: u32 = 32;
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;
/// Worker shards per pool. More threads than this share shards (still correct, just contended).
const SHARDS: usize = 4;

fn bucket_of(us: u64) -> usize {
    let v = us.min((1u64 << MAX_EXP) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The range `[lower, upper)` of a bucket, in microseconds.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64 + 1);
    }
    let k = i - SUB;
    let shift = (k / SUB) as u32;
    let lower = ((SUB + k % SUB) as u64) << shift;
    (lower, lower + (1u64 << shift))
}

struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the samples in microseconds, for Prometheus' `_sum`.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn add_to(&self, out: &mut Counts) {
        for (o, b) in out.buckets.iter_mut().zip(&self.buckets) {
            *o += b.load(Ordering::Relaxed);
        }
        out.sum_us = out.sum_us.wrapping_add(self.sum_us.load(Ordering::Relaxed));
    }
}

/// Status codes a shard counts in slots of its own, in the order they first appear. A
/// deployment answers with a handful of codes (more go to the overflow list); a slot per
/// possible code (500 of them) would be 8 kB. Sixteen made a shard 8,192 bytes, which its
/// 128-byte alignment pushes into the allocator's 10 kB size class.
pub(crate) const CODE_SLOTS: usize = 8;

/// Responses by status code (`switchyard_requests_total`), as one thread counted them.
#[derive(Default)]
struct CodeCounts {
    slots: [OnceLock<(u16, AtomicU64)>; CODE_SLOTS],
    /// Codes seen after every slot was taken, with their counts.
    overflow: Mutex<Vec<(u16, u64)>>,
}

impl CodeCounts {
    fn inc(&self, code: u16) {
        for cell in &self.slots {
            // Slots fill in order and each is set once, so a code is in the first slot that
            // is empty or holds it; two threads racing for a slot both see the winner's code.
            let (c, n) = cell.get_or_init(|| (code, AtomicU64::new(0)));
            if *c == code {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        match overflow.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => overflow.push((code, 1)),
        }
    }

    /// Adds this shard's counts to `out`, one entry per code.
    fn add_to(&self, out: &mut Vec<(u16, u64)>) {
        let slots = self.slots.iter().map_while(|cell| cell.get());
        let slots = slots.map(|(c, n)| (*c, n.load(Ordering::Relaxed)));
        let overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        for (code, n) in slots.chain(overflow.iter().copied()) {
            match out.iter_mut().find(|(c, _)| *c == code) {
                Some((_, total)) => *total += n,
                None => out.push((code, n)),
            }
        }
    }
}

#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    errors: AtomicU64,
    codes: CodeCounts,
    latency: Histogram,
    ttfb: Histogram,
    inter_chunk: Histogram,
    tpot: Histogram,
}

/// One pool's measurements (one deployment as seen from one environment).
#[derive(Default)]
pub struct PoolStats {
    shards: [OnceLock<Box<Shard>>; SHARDS],
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl PoolStats {
    #[inline]
    fn shard(&self) -> &Shard {
        let i = SHARD.with(|s| *s);
        self.shards[i].get_or_init(|| {
            Box::new(Shard {
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                codes: CodeCounts::default(),
                latency: Histogram::new(),
                ttfb: Histogram::new(),
                inter_chunk: Histogram::new(),
                tpot: Histogram::new(),
            })
        })
    }

    /// A response with this status was decided (the replica's, or switchyard's own for the
    /// deployment), counted by its code. 5xx counts as an error.
    #[inline]
    pub fn response(&self, status: u16) {
        let s = self.shard();
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.codes.inc(status);
        if status >= 500 {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A response body that broke off before its end (replica reset, idle timeout).
    pub fn stream_cut(&self) {
        self.shard().errors.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn latency(&self, d: Duration) {
        self.shard().latency.record(d);
    }

    #[inline]
    pub fn first_byte(&self, d: Duration) {
        self.shard().ttfb.record(d);
    }

    #[inline]
    pub fn inter_chunk(&self, d: Duration) {
        self.shard().inter_chunk.record(d);
    }

    pub fn time_per_output_chunk(&self, d: Duration) {
        self.shard().tpot.record(d);
    }

    /// A few sums that move whenever a request, an error, a latency or a time to first byte
    /// is recorded, so that a periodic reader can tell an idle pool without copying its
    /// histograms (one sample of under 1 µs moves no sum; it shows with the next that does).
    /// `None` while nothing was recorded.
    pub fn mark(&self) -> Option<[u64; 4]> {
        let mut shards = self.shards.iter().filter_map(OnceLock::get).peekable();
        shards.peek()?;
        let mut m = [0u64; 4];
        for s in shards {
            m[0] = m[0].wrapping_add(s.requests.load(Ordering::Relaxed));
            m[1] = m[1].wrapping_add(s.errors.load(Ordering::Relaxed));
            m[2] = m[2].wrapping_add(s.latency.sum_us.load(Ordering::Relaxed));
            m[3] = m[3].wrapping_add(s.ttfb.sum_us.load(Ordering::Relaxed));
        }
        Some(m)
    }

    /// Responses by status code, summed over the shards, in the order the codes first
    /// appeared in a shard.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for s in self.shards.iter().filter_map(OnceLock::get) {
            s.codes.add_to(&mut out);
        }
        out
    }

    /// One histogram summed over the shards, cumulative since the pool appeared: what a
    /// scrape reads, without copying the others.
    pub fn histogram(&self, which: Which) -> Counts {
        let mut out = Counts::default();
        for s in self.shards.iter().filter_map(OnceLock::get) {
            match which {
                Which::Latency => &s.latency,
                Which::FirstByte => &s.ttfb,
                Which::InterChunk => &s.inter_chunk,
            }
            .add_to(&mut out);
        }
        out
    }

    /// Sums the shards; cumulative since the pool appeared.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut out = StatsSnapshot::default();
        for s in self.shards.iter().filter_map(OnceLock::get) {
            out.requests += s.requests.load(Ordering::Relaxed);
            out.errors += s.errors.load(Ordering::Relaxed);
            s.latency.add_to(&mut out.latency);
            s.ttfb.add_to(&mut out.ttfb);
            s.inter_chunk.add_to(&mut out.inter_chunk);
            s.tpot.add_to(&mut out.tpot);
        }
        out
    }
}

/// A histogram of [`PoolStats`], for [`PoolStats::histogram`].
#[derive(Debug, Clone, Copy)]
pub enum Which {
    Latency,
    FirstByte,
    InterChunk,
}

/// Bucket counts of one histogram, and the sum of its samples.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts {
    buckets: Box<[u64; BUCKETS]>,
    pub sum_us: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: Box::new([0; BUCKETS]),
            sum_us: 0,
        }
    }
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Counts(n={}, p99={:?})",
            self.count(),
            self.quantile(0.99)
        )
    }
}

impl Counts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Samples at or below each bound (microseconds, ascending), for a Prometheus histogram's
    /// cumulative buckets. A log bucket counts under a bound when its middle is at or below it,
    /// so a count may be off by the samples of the one bucket a bound falls into (±6%).
    pub fn cumulative(&self, bounds_us: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_us.len());
        let (mut i, mut seen) = (0, 0u64);
        for &b in bounds_us {
            while i < BUCKETS {
                let (lo, hi) = bucket_range(i);
                if lo + (hi - lo) / 2 > b {
                    break;
                }
                seen += self.buckets[i];
                i += 1;
            }
            out.push(seen);
        }
        out
    }

    /// The value below which a share `q` (0-1) of the samples fall, as the middle of its
    /// bucket; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the sample, 1-based: p99 of 100 samples is the 99th.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                let mid = if hi - lo == 1 { lo } else { lo + (hi - lo) / 2 };
                return Some(Duration::from_micros(mid));
            }
        }
        None
    }

    /// Adds another histogram's samples (another instance's, say).
    pub fn add(&mut self, other: &Counts) {
        for (o, x) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *o = o.saturating_add(*x);
        }
        self.sum_us = self.sum_us.wrapping_add(other.sum_us);
    }

    fn since(&self, earlier: &Counts) -> Counts {
        let mut out = self.clone();
        for (o, e) in out.buckets.iter_mut().zip(earlier.buckets.iter()) {
            *o = o.saturating_sub(*e);
        }
        out.sum_us = self.sum_us.wrapping_sub(earlier.sum_us);
        out
    }

    /// Records a sample (for tests and tools that build histograms off the request path).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)] += 1;
        self.sum_us = self.sum_us.wrapping_add(us);
    }
}

/// As JSON: the sum and the non-empty buckets, `{"sum_us": N, "buckets": [[index, count], ...]}`
/// (instances on a shared store report their figures this way).
impl serde::Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let sparse: Vec<(usize, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i, *n))
            .collect();
        let mut st = s.serialize_struct("Counts", 2)?;
        st.serialize_field("sum_us", &self.sum_us)?;
        st.serialize_field("buckets", &sparse)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Sparse {
            sum_us: u64,
            buckets: Vec<(usize, u64)>,
        }
        let sparse = Sparse::deserialize(d)?;
        let mut c = Counts {
            sum_us: sparse.sum_us,
            ..Counts::default()
        };
        for (i, n) in sparse.buckets {
            let slot = c
                .buckets
                .get_mut(i)
                .ok_or_else(|| serde::de::Error::custom(format!("bucket {i} is out of range")))?;
            *slot = n;
        }
        Ok(c)
    }
}

/// Cumulative figures of one pool at one moment; subtract two to get a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    /// Request received to the end of the response body.
    pub latency: Counts,
    /// Request received to the first byte of the response body (the first token of a stream).
    pub ttfb: Counts,
    /// Gaps between body chunks of streamed responses (inter-token latency).
    pub inter_chunk: Counts,
    /// Per streamed response: (end − first byte) / (chunks − 1).
    pub tpot: Counts,
}

impl StatsSnapshot {
    /// Adds another snapshot's figures (the same pool on another instance).
    pub fn add(&mut self, other: &StatsSnapshot) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.add(&other.latency);
        self.ttfb.add(&other.ttfb);
        self.inter_chunk.add(&other.inter_chunk);
        self.tpot.add(&other.tpot);
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
            ttfb: self.ttfb.since(&earlier.ttfb),
            inter_chunk: self.inter_chunk.since(&earlier.inter_chunk),
            tpot: self.tpot.since(&earlier.tpot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_as_sparse_json_and_add_up() {
        let mut a = StatsSnapshot {
            requests: 3,
            errors: 1,
            ..Default::default()
        };
        for ms in [1, 20, 300] {
            a.latency.record(Duration::from_millis(ms));
        }
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.len() < 400, "sparse: {json}");
        let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let mut sum = a.clone();
        sum.add(&back);
        assert_eq!(sum.requests, 6);
        assert_eq!(sum.latency.count(), 6);
        assert_eq!(sum.since(&a), a, "the sum less one part is the other");
        assert!(serde_json::from_str::<Counts>(r#"{"sum_us":0,"buckets":[[999999,1]]}"#).is_err());
    }

    #[test]
    fn buckets_cover_every_value_in_order_without_gaps() {
        let mut prev_upper = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(lo, prev_upper, "bucket {i} starts where the last ended");
            assert!(hi > lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            prev_upper = hi;
        }
        assert_eq!(prev_upper, 1 << MAX_EXP);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_the_bucket_resolution() {
        let mut c = Counts::default();
        for ms in 1..=1000u64 {
            c.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = c.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!(
                (got - want).abs() / want < 0.07,
                "p{q}: {got} ms, want about {want}"
            );
        }
        assert_eq!(Counts::default().quantile(0.99), None);
    }

    #[test]
    fn cumulative_counts_follow_prometheus_bounds() {
        let mut c = Counts::default();
        for ms in [1u64, 2, 3, 50, 200, 2000] {
            c.record(Duration::from_millis(ms));
        }
        let bounds: Vec<u64> = [1_000, 5_000, 100_000, 1_000_000, 10_000_000].to_vec();
        assert_eq!(c.cumulative(&bounds), [1, 3, 4, 5, 6]);
        assert_eq!(c.sum_us, 2_256_000);
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let stats = PoolStats::default();
        assert_eq!(stats.snapshot(), StatsSnapshot::default());
        for _ in 0..10 {
            stats.response(200);
            stats.latency(Duration::from_millis(10));
        }
        let before = stats.snapshot();
        stats.response(500);
        stats.response(503);
        stats.stream_cut();
        stats.latency(Duration::from_millis(400));
        let w = stats.snapshot().since(&before);
        assert_eq!((w.requests, w.errors), (2, 3));
        assert_eq!(w.latency.count(), 1);
        let p99 = w.latency.quantile(0.99).unwrap();
        assert!(p99 > Duration::from_millis(380) && p99 < Duration::from_millis(420));
    }

    #[test]
    fn codes_beyond_the_slots_and_across_threads_are_counted_once_each() {
        let stats = PoolStats::default();
        let codes: Vec<u16> = (0..CODE_SLOTS as u16 + 6).map(|i| 200 + i).collect();
        // Every code on this thread (beyond its slots), and a few on others.
        for &c in &codes {
            stats.response(c);
        }
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for &c in codes.iter().rev().take(4) {
                        stats.response(c);
                    }
                });
            }
        });
        let mut counted = stats.codes();
        counted.sort_unstable();
        let want: Vec<(u16, u64)> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, if i + 4 >= codes.len() { 4 } else { 1 }))
            .collect();
        assert_eq!(counted, want);
        assert_eq!(stats.snapshot().requests, codes.len() as u64 + 12);
    }

    /// mimalloc serves a 128-byte-aligned allocation from the size class of its size plus
    /// 127 bytes: a shard one byte over 8,065 costs 10,240.
    #[test]
    fn a_shard_with_its_alignment_fits_the_8_kib_size_class() {
        let size = std::mem::size_of::<Shard>();
        let align = std::mem::align_of::<Shard>();
        assert!(size + align - 1 <= 8192, "a shard is {size} bytes");
    }

    #[test]
    fn a_shard_is_allocated_only_for_a_thread_that_records() {
        let stats = PoolStats::default();
        assert_eq!(stats.mark(), None);
        for _ in 0..3 {
            stats.response(200);
        }
        let allocated = stats.shards.iter().filter(|s| s.get().is_some()).count();
        assert_eq!(allocated, 1, "one thread recorded");
        assert_eq!(stats.snapshot().requests, 3);
        assert!(stats.mark().is_some());
    }

    #[test]
    fn threads_on_different_shards_add_up() {
        let stats = std::sync::Arc::new(PoolStats::default());
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.response(200);
                        s.first_byte(Duration::from_micros(50));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = stats.snapshot();
        assert_eq!(snap.requests, 6000);
        assert_eq!(snap.ttfb.count(), 6000);
    }
}

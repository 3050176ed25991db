//! Counters and histograms written per thread and summed when scraped.
//!
//! prometheus-client's counter is one atomic and its histogram one mutex
//! that every worker writes: under load the cache line holding them moves
//! between cores on each request. Here each thread writes a shard of its own
//! (a plain load and store, no locked instruction; only that thread writes
//! it) on a cache line of its own, and `/metrics` adds the shards up. A
//! thread's shard outlives the thread (the next thread given its slot goes
//! on counting in it), so no count is lost.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use thread_local::ThreadLocal;

/// A value on a cache line of its own, so two threads' shards never share one.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Adds `n` to a value only the calling thread writes.
fn bump(value: &AtomicU64, n: u64) {
    value.store(
        value.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A monotonic counter with a shard per thread.
#[derive(Clone, Default)]
pub struct ShardedCounter {
    shards: Arc<ThreadLocal<Padded<AtomicU64>>>,
}

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        bump(&self.shards.get_or_default().0, n);
    }

    /// The total over every thread.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's observations: the sum (an `f64`'s bits) and a count per
/// bucket.
struct HistogramShard {
    sum: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

/// A histogram with fixed bucket bounds and a shard per thread. Its count is
/// the sum of its buckets, so the `+Inf` bucket and `_count` always agree.
#[derive(Clone)]
pub struct ShardedHistogram {
    inner: Arc<HistogramInner>,
}

struct HistogramInner {
    /// Upper bounds, ascending, the last `+Inf`.
    bounds: Box<[f64]>,
    shards: ThreadLocal<Padded<HistogramShard>>,
}

impl ShardedHistogram {
    /// A histogram with these upper bounds (ascending) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds = bounds.into_iter().chain([f64::INFINITY]).collect();
        Self {
            inner: Arc::new(HistogramInner {
                bounds,
                shards: ThreadLocal::new(),
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        let shard = &inner
            .shards
            .get_or(|| {
                Padded(HistogramShard {
                    sum: AtomicU64::new(0f64.to_bits()),
                    buckets: inner.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                })
            })
            .0;
        // NaN and anything past the last finite bound land in `+Inf`.
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len() - 1);
        if let Some(count) = shard.buckets.get(bucket) {
            bump(count, 1);
        }
        let sum = f64::from_bits(shard.sum.load(Ordering::Relaxed)) + value;
        shard.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// The sum, the count and the per-bucket counts (not cumulative) over
    /// every thread.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.inner.bounds.iter().map(|b| (*b, 0)).collect();
        let mut sum = 0.0;
        for shard in self.inner.shards.iter() {
            sum += f64::from_bits(shard.0.sum.load(Ordering::Relaxed));
            for (total, count) in buckets.iter_mut().zip(shard.0.buckets.iter()) {
                total.1 += count.load(Ordering::Relaxed);
            }
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum, count, buckets)
    }
}

impl fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sum, count, _) = self.snapshot();
        f.debug_struct("ShardedHistogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish()
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    /// The text exposition of one metric registered as `m`.
    fn exposition(metric: impl EncodeMetric + Send + Sync + fmt::Debug + 'static) -> String {
        let mut registry = Registry::default();
        registry.register("m", "help", metric);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    #[test]
    fn shards_written_by_many_threads_add_up_to_what_the_stock_metrics_show() {
        let bounds = [0.001, 0.01, 0.1];
        let (sharded, stock) = (ShardedCounter::default(), Counter::<u64>::default());
        let (histogram, stock_histogram) = (ShardedHistogram::new(bounds), Histogram::new(bounds));
        // Powers of two: every sum is exact in any order.
        let values = [0.000_488_281_25, 0.000_976_562_5, 0.031_25, 0.5, 8.0];
        std::thread::scope(|scope| {
            for thread in 0..4u32 {
                let (sharded, histogram) = (&sharded, &histogram);
                scope.spawn(move || {
                    for i in 0..1000u32 {
                        sharded.inc_by(u64::from(thread + 1));
                        histogram.observe(values[(i % 5) as usize]);
                    }
                });
            }
        });
        for thread in 0..4u32 {
            for i in 0..1000u32 {
                stock.inc_by(u64::from(thread + 1));
                stock_histogram.observe(values[(i % 5) as usize]);
            }
        }
        assert_eq!(sharded.get(), 10_000);
        assert_eq!(exposition(sharded), exposition(stock));
        assert_eq!(exposition(histogram.clone()), exposition(stock_histogram));
        // NaN counts in `+Inf`, like the stock histogram.
        histogram.observe(f64::NAN);
        assert_eq!(histogram.snapshot().1, 4001);
        assert_eq!(histogram.snapshot().2.last().map(|b| b.1), Some(1601));
    }
}

//! The two routing decisions: which pool (by weight) and which replica (power of two choices on
//! outstanding requests). Pure functions of the snapshot and an RNG, so tests seed the RNG.

use std::sync::Arc;

use rand::Rng;

use super::snapshot::{Environment, Pool, Replica};

impl Environment {
    /// Picks a pool with probability proportional to its weight; `None` when no pool has weight.
    #[inline]
    pub fn pick_pool<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&Arc<Pool>> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let x = rng.random_range(0..total);
        // Environments hold two or three pools: a linear scan beats a binary search.
        let i = self.cumulative.iter().position(|&c| x < c)?;
        self.pools.get(i)
    }

    /// The share (0 to 1) of unpinned traffic a pool receives.
    pub fn share(&self, index: usize) -> f64 {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0.0;
        }
        let prev = if index == 0 {
            0
        } else {
            self.cumulative[index - 1]
        };
        f64::from(self.cumulative[index] - prev) / f64::from(total)
    }
}

impl Pool {
    /// Power of two choices: sample two distinct replicas, take the one with fewer outstanding
    /// requests. Replicas that are ejected, draining, or listed in `exclude` (already tried for
    /// this request) are skipped; when both samples are unusable, scans for any usable one.
    /// When every replica not draining and not excluded is ejected, the pick is made among the
    /// ejected ones ([`Self::pick_ejected`]) rather than failing.
    #[inline]
    pub fn pick_replica<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        exclude: &[u64],
    ) -> Option<&Arc<Replica>> {
        self.pick_available(rng, exclude)
            .or_else(|| self.pick_ejected(exclude))
    }

    #[inline]
    fn pick_available<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        exclude: &[u64],
    ) -> Option<&Arc<Replica>> {
        let usable = |r: &Arc<Replica>| r.is_available() && !exclude.contains(&r.id);
        let n = self.replicas.len();
        match n {
            0 => None,
            1 => self.replicas.first().filter(|r| usable(r)),
            _ => {
                let a = rng.random_range(0..n);
                // A second index distinct from the first, uniformly.
                let b = (a + 1 + rng.random_range(0..n - 1)) % n;
                let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
                match (usable(ra), usable(rb)) {
                    (true, true) => Some(if rb.outstanding() < ra.outstanding() {
                        rb
                    } else {
                        ra
                    }),
                    (true, false) => Some(ra),
                    (false, true) => Some(rb),
                    (false, false) => {
                        // Start the scan at a random place so survivors share the load.
                        (0..n)
                            .map(|i| &self.replicas[(a + i) % n])
                            .find(|r| usable(r))
                    }
                }
            }
        }
    }

    /// The last resort, like Envoy's panic routing and nginx's rule that a lone server is never
    /// marked down: when passive ejection has taken out every replica that is not draining,
    /// the one of them with the fewest outstanding requests is tried anyway. Ejection steers
    /// traffic to the other replicas; with none left, answering 503 for the whole eject period
    /// would turn a burst of slow connects (a replica's accept queue overflowing once) into
    /// seconds of refusals from a replica that is already fine again. A connect that fails
    /// here costs what it did before ejection; one that succeeds ends the ejection.
    #[cold]
    fn pick_ejected(&self, exclude: &[u64]) -> Option<&Arc<Replica>> {
        self.replicas
            .iter()
            .filter(|r| !r.is_draining() && !exclude.contains(&r.id))
            .min_by_key(|r| r.outstanding())
    }

    /// Does the pool have any replica that could take a request now?
    pub fn has_available(&self) -> bool {
        self.replicas.iter().any(|r| r.is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::time::Duration;

    fn pool(metrics: &Metrics, deployment: &str, replicas: usize) -> Arc<Pool> {
        Arc::new(Pool {
            model: "m".into(),
            environment: "e".into(),
            deployment: deployment.into(),
            replicas: (0..replicas)
                .map(|i| {
                    Arc::new(Replica::new(
                        i as u64,
                        format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                        deployment.into(),
                    ))
                })
                .collect(),
            metrics: metrics.pool("m", "e", deployment),
            header_value: http::HeaderValue::from_static("x"),
        })
    }

    fn env(pools: Vec<(Arc<Pool>, u32)>) -> Environment {
        let mut sum = 0;
        let cumulative = pools
            .iter()
            .map(|(_, w)| {
                sum += w;
                sum
            })
            .collect();
        Environment {
            name: "e".into(),
            pools: pools.into_iter().map(|(p, _)| p).collect(),
            cumulative,
        }
    }

    #[test]
    fn pool_pick_follows_weights() {
        let m = Metrics::new();
        let e = env(vec![
            (pool(&m, "v1", 1), 900_000),
            (pool(&m, "v2", 1), 100_000),
        ]);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000;
        let v2 = (0..n)
            .filter(|_| &*e.pick_pool(&mut rng).unwrap().deployment == "v2")
            .count();
        let share = v2 as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "v2 share {share}");
    }

    #[test]
    fn fine_weights_are_honoured() {
        // 1/10000 of the traffic must be representable.
        let m = Metrics::new();
        let e = env(vec![(pool(&m, "v1", 1), 999_900), (pool(&m, "v2", 1), 100)]);
        let mut rng = SmallRng::seed_from_u64(11);
        let n = 2_000_000;
        let v2 = (0..n)
            .filter(|_| &*e.pick_pool(&mut rng).unwrap().deployment == "v2")
            .count();
        assert!((100..=300).contains(&v2), "v2 got {v2} of {n}");
    }

    #[test]
    fn zero_weight_pools_are_never_picked() {
        let m = Metrics::new();
        let e = env(vec![(pool(&m, "v1", 1), 0), (pool(&m, "v2", 1), 5)]);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert_eq!(&*e.pick_pool(&mut rng).unwrap().deployment, "v2");
        }
        let none = env(vec![(pool(&m, "v1", 1), 0)]);
        assert!(none.pick_pool(&mut rng).is_none());
        assert_eq!(e.share(0), 0.0);
        assert_eq!(e.share(1), 1.0);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_replica() {
        let m = Metrics::new();
        let p = pool(&m, "v1", 2);
        for _ in 0..5 {
            p.replicas[0].begin_request();
        }
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(p.pick_replica(&mut rng, &[]).unwrap().id, 1);
        }
    }

    #[test]
    fn p2c_spreads_equal_load_and_never_picks_the_most_loaded_of_three() {
        let m = Metrics::new();
        let p = pool(&m, "v1", 3);
        for _ in 0..10 {
            p.replicas[2].begin_request();
        }
        let mut rng = SmallRng::seed_from_u64(5);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[p.pick_replica(&mut rng, &[]).unwrap().id as usize] += 1;
        }
        // Replica 2 only wins when both samples are... never: a pair always holds 0 or 1.
        assert_eq!(counts[2], 0, "{counts:?}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((0.9..1.1).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn excluded_ejected_and_draining_replicas_are_skipped() {
        let m = Metrics::new();
        let p = pool(&m, "v1", 3);
        let mut rng = SmallRng::seed_from_u64(9);
        p.replicas[0].set_draining(true);
        p.replicas[1].record_connect_failure(1, Duration::from_secs(60));
        for _ in 0..200 {
            assert_eq!(p.pick_replica(&mut rng, &[]).unwrap().id, 2);
        }
        // With the only available one excluded, the ejected one is the last resort; the
        // draining one never is.
        for _ in 0..20 {
            assert_eq!(p.pick_replica(&mut rng, &[2]).unwrap().id, 1);
        }
        assert!(p.pick_replica(&mut rng, &[1, 2]).is_none());
        assert!(p.has_available());
        p.replicas[2].set_draining(true);
        assert!(!p.has_available());
        assert_eq!(p.pick_replica(&mut rng, &[]).unwrap().id, 1);
    }

    #[test]
    fn a_pool_whose_every_replica_is_ejected_still_picks_the_least_loaded() {
        let m = Metrics::new();
        let p = pool(&m, "v1", 3);
        let mut rng = SmallRng::seed_from_u64(3);
        for r in &p.replicas {
            assert!(r.record_connect_failure(1, Duration::from_secs(60)));
        }
        p.replicas[0].begin_request();
        p.replicas[0].begin_request();
        p.replicas[2].begin_request();
        for _ in 0..50 {
            assert_eq!(p.pick_replica(&mut rng, &[]).unwrap().id, 1);
        }
        assert_eq!(p.pick_replica(&mut rng, &[1]).unwrap().id, 2);
        // Any replica that is available again wins over the ejected ones, however loaded.
        p.replicas[0].record_connect_success();
        for _ in 0..50 {
            assert_eq!(p.pick_replica(&mut rng, &[]).unwrap().id, 0);
        }
        let one = pool(&m, "v1", 1);
        one.replicas[0].record_connect_failure(1, Duration::from_secs(60));
        assert_eq!(one.pick_replica(&mut rng, &[]).unwrap().id, 0);
        one.replicas[0].set_draining(true);
        assert!(one.pick_replica(&mut rng, &[]).is_none());
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let m = Metrics::new();
        let p = pool(&m, "v1", 0);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!(p.pick_replica(&mut rng, &[]).is_none());
    }
}

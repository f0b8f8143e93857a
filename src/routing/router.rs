//! The one place routing snapshots are built and swapped in.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::snapshot::{Environment, HostTable, Model, Pool, Replica, Snapshot};
use super::spec::{ModelSpec, RoutingSpec, WEIGHT_SCALE};
use crate::metrics::window::StatsSnapshot;
use crate::metrics::{Metrics, PoolMetrics};

/// Holds the current [`Snapshot`] for the data plane and builds new ones for the control plane.
///
/// Readers call [`Router::load`] (lock free). Writers call [`Router::apply`], which takes a mutex
/// that only writers contend on.
pub struct Router {
    current: ArcSwap<Snapshot>,
    metrics: Metrics,
    build: Mutex<BuildState>,
}

#[derive(Default)]
struct BuildState {
    next_replica_id: u64,
    version: u64,
    /// Each model as last built. A model whose spec did not change moves over whole (one map
    /// entry, no allocation), so a rebuild costs what changed, not the whole configuration.
    models: HashMap<String, ModelBuild>,
    /// Replicas that left the snapshot, by (model, deployment), while requests still hold them.
    retired: Vec<(String, String, std::sync::Weak<Replica>)>,
    /// The snapshot swapped out by the last apply, freed by the next one. A worker routing
    /// at the moment of a swap holds the old snapshot; were its reference the last, that
    /// worker would free it: 20,000 reference counts on cold cache lines for 10,000 models,
    /// 0.4 ms on a request's path (`cargo bench --bench swap_stall`). Kept here, the freeing
    /// happens on the controller's thread, one rebuild later.
    previous: Option<Arc<Snapshot>>,
}

/// One model as last built: the spec it came from, its part of the snapshot, and what a
/// rebuild keeps (replica objects with their load counters, pool metric handles).
struct ModelBuild {
    spec: ModelSpec,
    model: Arc<Model>,
    /// Replica objects by deployment, then address.
    replicas: HashMap<String, HashMap<SocketAddr, Arc<Replica>>>,
    /// Pool metrics by (environment, deployment); environment "" for a deployment no
    /// environment routes to (pinned requests only).
    pools: HashMap<(String, String), Arc<PoolMetrics>>,
    /// Lower-cased Host names and the environment each selects.
    hosts: Vec<(Arc<str>, usize)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("model {0:?} is declared twice")]
    DuplicateModel(String),
    #[error("model {model:?}: deployment {deployment:?} is declared twice")]
    DuplicateDeployment { model: String, deployment: String },
    #[error("model {model:?}: environment {environment:?} is declared twice")]
    DuplicateEnvironment { model: String, environment: String },
    #[error("model {model:?}, environment {environment:?}: weight names deployment {deployment:?}, which the model does not declare")]
    UnknownDeployment {
        model: String,
        environment: String,
        deployment: String,
    },
    #[error(
        "model {model:?}, environment {environment:?}: weights add up to more than {WEIGHT_SCALE}"
    )]
    WeightOverflow { model: String, environment: String },
    #[error("model {model:?} has no environment")]
    NoEnvironment { model: String },
    #[error("host {host:?} is claimed twice")]
    DuplicateHost { host: String },
    #[error("deployment id {0:?} cannot be sent as a header value")]
    BadDeploymentId(String),
}

impl Router {
    pub fn new(metrics: Metrics) -> Self {
        Router {
            current: ArcSwap::from_pointee(Snapshot::default()),
            metrics,
            build: Mutex::new(BuildState::default()),
        }
    }

    /// The current snapshot. Hold the guard briefly: clone the `Arc`s you need instead.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The live replica object (load counters, draining flag) for an endpoint of a deployment,
    /// while some snapshot still lists it.
    pub fn replica(&self, model: &str, deployment: &str, addr: SocketAddr) -> Option<Arc<Replica>> {
        let st = self.build.lock().unwrap_or_else(|e| e.into_inner());
        st.models
            .get(model)
            .and_then(|m| m.replicas.get(deployment))
            .and_then(|d| d.get(&addr))
            .cloned()
    }

    /// Replicas no longer in the snapshot that still have requests in flight:
    /// (model, deployment, address, in flight). A replica back in the snapshot is not listed.
    pub fn retired_in_flight(&self) -> Vec<(String, String, SocketAddr, u32)> {
        let mut st = self.build.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        let live = &st.models;
        st.retired.retain(|(m, d, w)| {
            w.strong_count() > 0
                && !live
                    .get(m)
                    .and_then(|b| b.replicas.get(d))
                    .is_some_and(|now| w.upgrade().is_some_and(|r| now.contains_key(&r.addr)))
        });
        st.retired
            .iter()
            .filter_map(|(m, d, w)| {
                let r = w.upgrade()?;
                let n = r.outstanding();
                (n > 0).then(|| (m.clone(), d.clone(), r.addr, n))
            })
            .collect()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metric handles of every pool an environment routes to (labels: model,
    /// environment, deployment), taken in one pass under the build lock, for a reader that
    /// visits them all: the dashboard's sampler. Pinned-only pools are left out.
    pub fn environment_pools(&self) -> Vec<Arc<PoolMetrics>> {
        let st = self.build.lock().unwrap_or_else(|e| e.into_inner());
        st.models
            .values()
            .flat_map(|m| m.pools.iter())
            .filter(|((env, _), _)| !env.is_empty())
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The cumulative figures of one deployment as seen from one environment; zero while no
    /// snapshot has that pool.
    pub fn pool_stats(&self, model: &str, environment: &str, deployment: &str) -> StatsSnapshot {
        let st = self.build.lock().unwrap_or_else(|e| e.into_inner());
        st.models
            .get(model)
            .and_then(|m| {
                m.pools
                    .get(&(environment.to_owned(), deployment.to_owned()))
            })
            .map(|p| p.stats.snapshot())
            .unwrap_or_default()
    }

    /// Validates `spec`, builds a snapshot from it and swaps it in. Replicas and metric handles
    /// that the previous snapshot had are reused; series of pools that are gone are removed.
    /// A rejected spec leaves the current snapshot untouched. Returns the new version.
    pub fn apply(&self, spec: &RoutingSpec) -> Result<u64, SpecError> {
        validate(spec)?;
        let mut guard = self.build.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let mut builds: HashMap<String, ModelBuild> = HashMap::with_capacity(spec.models.len());
        let mut hosts = Vec::new();
        let mut models = Vec::with_capacity(spec.models.len());

        for (mi, m) in spec.models.iter().enumerate() {
            let old = st.models.remove_entry(&m.id);
            let (key, build) = match old {
                // Unchanged: the same model, replica objects and metric handles carry over.
                Some((key, b)) if b.spec == *m => (key, b),
                old => {
                    let old = old.map(|(_, b)| b);
                    let b = match self.build_model(&mut st.next_replica_id, m, old.as_ref()) {
                        Ok(b) => b,
                        // Not reached (validation covers what can fail): keep what was built.
                        Err(e) => {
                            if let Some(o) = old {
                                st.models.insert(m.id.clone(), o);
                            }
                            st.models.extend(builds);
                            return Err(e);
                        }
                    };
                    if let Some(old) = old {
                        retire(&mut st.retired, &m.id, &old, Some(&b));
                    }
                    (m.id.clone(), b)
                }
            };
            for (h, ei) in &build.hosts {
                hosts.push((h.clone(), (mi, *ei)));
            }
            models.push(build.model.clone());
            builds.insert(key, build);
        }
        // Models that are gone: their series go, their replicas drain.
        for (id, old) in std::mem::replace(&mut st.models, builds) {
            retire(&mut st.retired, &id, &old, None);
        }
        st.version += 1;
        let version = st.version;
        let swapped_out = self.current.swap(Arc::new(Snapshot {
            models: models.into(),
            hosts: HostTable::new(hosts),
            version,
        }));
        // The one before it is freed here, on this thread (see `previous`).
        drop(st.previous.replace(swapped_out));
        Ok(version)
    }

    /// Builds one model, reusing the replica objects and metric handles of its last build.
    fn build_model(
        &self,
        next_replica_id: &mut u64,
        m: &ModelSpec,
        old: Option<&ModelBuild>,
    ) -> Result<ModelBuild, SpecError> {
        let model_id: Arc<str> = m.id.as_str().into();
        let mut replicas = HashMap::with_capacity(m.deployments.len());
        // Replica objects of each deployment, shared by every environment that routes to it.
        let mut deployment_replicas: HashMap<&str, Box<[Arc<Replica>]>> = HashMap::new();
        for d in &m.deployments {
            let dep: Arc<str> = d.id.as_str().into();
            let before = old.and_then(|o| o.replicas.get(&d.id));
            let mut now = HashMap::with_capacity(d.replicas.len());
            let list = d
                .replicas
                .iter()
                .map(|addr| {
                    let r = before
                        .and_then(|b| b.get(addr))
                        .cloned()
                        .unwrap_or_else(|| {
                            *next_replica_id += 1;
                            Arc::new(Replica::new(*next_replica_id, *addr, dep.clone()))
                        });
                    now.insert(*addr, r.clone());
                    r
                })
                .collect();
            replicas.insert(d.id.clone(), now);
            deployment_replicas.insert(d.id.as_str(), list);
        }
        let mut pools = HashMap::new();
        let mut make_pool = |env: &str, dep: &str| -> Result<Arc<Pool>, SpecError> {
            let key = (env.to_owned(), dep.to_owned());
            let metrics = old
                .and_then(|o| o.pools.get(&key))
                .cloned()
                .unwrap_or_else(|| self.metrics.pool(&m.id, env, dep));
            pools.insert(key, metrics.clone());
            let replicas = deployment_replicas.get(dep).cloned().unwrap_or_default();
            metrics.ready_replicas.set(replicas.len() as i64);
            Ok(Arc::new(Pool {
                model: model_id.clone(),
                environment: env.into(),
                deployment: dep.into(),
                header_value: HeaderValue::from_str(dep)
                    .map_err(|_| SpecError::BadDeploymentId(dep.to_owned()))?,
                replicas,
                metrics,
            }))
        };
        let mut environments = Vec::with_capacity(m.environments.len());
        let mut in_env = HashSet::new();
        for e in &m.environments {
            let mut sum = 0u32;
            let mut env_pools = Vec::with_capacity(e.weights.len());
            let mut cumulative = Vec::with_capacity(e.weights.len());
            for (dep, w) in &e.weights {
                sum += w;
                env_pools.push(make_pool(&e.name, dep)?);
                cumulative.push(sum);
                in_env.insert(dep.as_str());
            }
            let env = Environment {
                name: e.name.as_str().into(),
                pools: env_pools.into(),
                cumulative: cumulative.into(),
            };
            for (i, p) in env.pools.iter().enumerate() {
                p.metrics.weight.set(env.share(i));
            }
            environments.push(env);
        }
        let unassigned = m
            .deployments
            .iter()
            .filter(|d| !in_env.contains(d.id.as_str()))
            .map(|d| make_pool("", &d.id))
            .collect::<Result<Vec<_>, _>>()?;
        let default_environment = m.default_environment();
        Ok(ModelBuild {
            spec: m.clone(),
            model: Arc::new(Model {
                id: model_id,
                environments: environments.into(),
                default_environment,
                unassigned: unassigned.into(),
            }),
            replicas,
            pools,
            hosts: model_hosts(m, default_environment),
        })
    }
}

/// What a model's rebuild (`now`) or removal (`None`) leaves behind: series of pools that are
/// gone are removed, and replicas that left are followed until their last request ends.
fn retire(
    retired: &mut Vec<(String, String, std::sync::Weak<Replica>)>,
    model: &str,
    old: &ModelBuild,
    now: Option<&ModelBuild>,
) {
    for (key, metrics) in &old.pools {
        if now.is_none_or(|n| !n.pools.contains_key(key)) {
            metrics.remove();
        }
    }
    for (dep, reps) in &old.replicas {
        let kept = now.and_then(|n| n.replicas.get(dep));
        for (addr, r) in reps {
            if kept.is_none_or(|k| !k.contains_key(addr)) {
                retired.push((model.to_owned(), dep.clone(), Arc::downgrade(r)));
            }
        }
    }
}

/// A model's Host routes, lower-cased: its environments' hosts, and its own to its default
/// environment.
fn model_hosts(m: &ModelSpec, default_environment: usize) -> Vec<(Arc<str>, usize)> {
    let mut out = Vec::new();
    for (ei, e) in m.environments.iter().enumerate() {
        for h in &e.hosts {
            out.push((h.to_ascii_lowercase().into(), ei));
        }
    }
    for h in &m.hosts {
        out.push((h.to_ascii_lowercase().into(), default_environment));
    }
    out
}

fn validate(spec: &RoutingSpec) -> Result<(), SpecError> {
    use std::hash::{BuildHasher, Hasher};
    let mut model_ids = HashSet::with_capacity(spec.models.len());
    // Hosts by the hash of their lower-cased bytes (no lower-cased copy per host); equal
    // hashes are compared exactly.
    let state = std::collections::hash_map::RandomState::new();
    let mut hosts: HashMap<u64, Vec<&str>> = HashMap::new();
    fn claim<'a>(
        hosts: &mut HashMap<u64, Vec<&'a str>>,
        state: &std::collections::hash_map::RandomState,
        h: &'a str,
    ) -> Result<(), SpecError> {
        let mut hasher = state.build_hasher();
        for b in h.bytes() {
            hasher.write_u8(b.to_ascii_lowercase());
        }
        let same = hosts.entry(hasher.finish()).or_default();
        if same.iter().any(|x| x.eq_ignore_ascii_case(h)) {
            return Err(SpecError::DuplicateHost { host: h.to_owned() });
        }
        same.push(h);
        Ok(())
    }
    for m in &spec.models {
        if !model_ids.insert(&m.id) {
            return Err(SpecError::DuplicateModel(m.id.clone()));
        }
        if m.environments.is_empty() {
            return Err(SpecError::NoEnvironment {
                model: m.id.clone(),
            });
        }
        // A model has a handful of deployments and environments: scans, no sets.
        for (i, d) in m.deployments.iter().enumerate() {
            if HeaderValue::from_str(&d.id).is_err() {
                return Err(SpecError::BadDeploymentId(d.id.clone()));
            }
            if m.deployments[..i].iter().any(|x| x.id == d.id) {
                return Err(SpecError::DuplicateDeployment {
                    model: m.id.clone(),
                    deployment: d.id.clone(),
                });
            }
        }
        for (i, e) in m.environments.iter().enumerate() {
            if m.environments[..i].iter().any(|x| x.name == e.name) {
                return Err(SpecError::DuplicateEnvironment {
                    model: m.id.clone(),
                    environment: e.name.clone(),
                });
            }
            let mut sum: u64 = 0;
            for (dep, w) in &e.weights {
                if !m.deployments.iter().any(|d| d.id == *dep) {
                    return Err(SpecError::UnknownDeployment {
                        model: m.id.clone(),
                        environment: e.name.clone(),
                        deployment: dep.clone(),
                    });
                }
                sum += u64::from(*w);
            }
            if sum > u64::from(WEIGHT_SCALE) {
                return Err(SpecError::WeightOverflow {
                    model: m.id.clone(),
                    environment: e.name.clone(),
                });
            }
            for h in &e.hosts {
                claim(&mut hosts, &state, h)?;
            }
        }
        for h in &m.hosts {
            claim(&mut hosts, &state, h)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::snapshot::Route;
    use crate::routing::spec::{DeploymentSpec, EnvironmentSpec, ModelSpec};

    fn spec(v2_weight: u32, v2_replicas: &[&str]) -> RoutingSpec {
        RoutingSpec {
            models: vec![ModelSpec {
                id: "m".into(),
                hosts: vec!["m.example".into()],
                deployments: vec![
                    DeploymentSpec {
                        id: "v1".into(),
                        replicas: vec!["127.0.0.1:1001".parse().unwrap()],
                    },
                    DeploymentSpec {
                        id: "v2".into(),
                        replicas: v2_replicas.iter().map(|a| a.parse().unwrap()).collect(),
                    },
                    DeploymentSpec {
                        id: "v3".into(),
                        replicas: vec![],
                    },
                ],
                environments: vec![
                    EnvironmentSpec {
                        name: "staging".into(),
                        hosts: vec!["staging.example".into()],
                        weights: [("v2".to_string(), WEIGHT_SCALE)].into_iter().collect(),
                    },
                    EnvironmentSpec {
                        name: "production".into(),
                        hosts: vec![],
                        weights: [
                            ("v1".to_string(), WEIGHT_SCALE - v2_weight),
                            ("v2".to_string(), v2_weight),
                        ]
                        .into_iter()
                        .collect(),
                    },
                ],
            }],
        }
    }

    #[test]
    fn an_unchanged_model_is_reused_whole_and_a_changed_one_rebuilt() {
        let r = Router::new(Metrics::new());
        let mut two = spec(50, &["127.0.0.1:2001"]);
        let mut other = two.models[0].clone();
        other.id = "other".into();
        other.hosts.clear();
        for e in &mut other.environments {
            e.hosts.clear();
        }
        two.models.push(other);
        r.apply(&two).unwrap();
        let s1 = r.load_full();
        two.models[0].environments[1].weights.insert("v2".into(), 1);
        r.apply(&two).unwrap();
        let s2 = r.load_full();
        assert!(
            !Arc::ptr_eq(&s1.models[0], &s2.models[0]),
            "changed: rebuilt"
        );
        assert!(
            Arc::ptr_eq(&s1.models[1], &s2.models[1]),
            "unchanged: reused"
        );
        // The rebuilt model still shares replica objects with the one before.
        assert!(Arc::ptr_eq(
            &s1.models[0].environments[1].pools[1].replicas[0],
            &s2.models[0].environments[1].pools[1].replicas[0]
        ));
        assert!(r
            .replica("other", "v2", "127.0.0.1:2001".parse().unwrap())
            .is_some());
    }

    #[test]
    fn a_snapshot_swapped_out_is_freed_by_the_next_apply_not_by_a_worker_letting_go() {
        let r = Router::new(Metrics::new());
        r.apply(&spec(0, &["127.0.0.1:2001"])).unwrap();
        // A worker routing at the moment of the swap.
        let routed_with = r.load_full();
        r.apply(&spec(1, &["127.0.0.1:2001"])).unwrap();
        assert_eq!(
            Arc::strong_count(&routed_with),
            2,
            "the router still holds the snapshot it swapped out, so the worker's is not the last"
        );
        r.apply(&spec(2, &["127.0.0.1:2001"])).unwrap();
        assert_eq!(
            Arc::strong_count(&routed_with),
            1,
            "the next apply lets go of it"
        );
    }

    #[test]
    fn replicas_keep_their_counters_across_swaps() {
        let r = Router::new(Metrics::new());
        r.apply(&spec(0, &["127.0.0.1:2001"])).unwrap();
        let s1 = r.load_full();
        let before = s1.models[0].environments[1].pools[1].replicas[0].clone();
        before.begin_request();
        r.apply(&spec(500_000, &["127.0.0.1:2001", "127.0.0.1:2002"]))
            .unwrap();
        let s2 = r.load_full();
        let after = &s2.models[0].environments[1].pools[1].replicas;
        assert_eq!(after.len(), 2);
        assert!(Arc::ptr_eq(&before, &after[0]));
        assert_eq!(after[0].outstanding(), 1);
        assert_eq!(s2.version, s1.version + 1);
    }

    #[test]
    fn resolves_hosts_environments_and_pins() {
        let r = Router::new(Metrics::new());
        r.apply(&spec(0, &["127.0.0.1:2001"])).unwrap();
        let s = r.load();
        // Default environment is production even though staging is declared first.
        let res = s.resolve(None, "/predict").unwrap();
        assert_eq!(&*res.environment.name, "production");
        assert_eq!(res.strip, 0);
        let res = s.resolve(Some("STAGING.example:8080"), "/x").unwrap();
        assert_eq!(&*res.environment.name, "staging");
        let res = s.resolve(None, "/environments/staging/v1/chat").unwrap();
        assert_eq!(&*res.environment.name, "staging");
        assert_eq!(res.strip, "/environments/staging".len());
        let res = s.resolve(None, "/deployment/v2/predict").unwrap();
        match res.route {
            Route::Pinned(p) => {
                assert_eq!(&*p.deployment, "v2");
                assert_eq!(&*p.environment, "production");
            }
            Route::Split(_) => panic!("expected a pinned route"),
        }
        let res = s.resolve(None, "/deployment/v3/predict").unwrap();
        match res.route {
            Route::Pinned(p) => assert_eq!(&*p.environment, ""),
            Route::Split(_) => panic!("expected a pinned route"),
        }
        assert_eq!(
            s.resolve(None, "/deployment/nope/x").err(),
            Some(crate::routing::snapshot::RouteError::UnknownDeployment {
                model: "m".into(),
                deployment: "nope".into()
            })
        );
        assert!(s.resolve(None, "/environments/dev/x").is_err());
    }

    #[test]
    fn bad_specs_are_rejected_and_change_nothing() {
        let r = Router::new(Metrics::new());
        let v = r.apply(&spec(0, &[])).unwrap();
        let mut bad = spec(0, &[]);
        bad.models[0].environments[1].weights.insert("v9".into(), 1);
        let err = r.apply(&bad).unwrap_err();
        assert!(err.to_string().contains("\"v9\""), "{err}");
        let mut bad = spec(0, &[]);
        bad.models[0].environments[1].weights.insert("v3".into(), 1);
        assert!(matches!(
            r.apply(&bad),
            Err(SpecError::WeightOverflow { .. })
        ));
        let mut bad = spec(0, &[]);
        let dup = bad.models[0].deployments[0].clone();
        bad.models[0].deployments.push(dup);
        assert!(matches!(
            r.apply(&bad),
            Err(SpecError::DuplicateDeployment { .. })
        ));
        let mut bad = spec(0, &[]);
        let dup = bad.models[0].environments[0].clone();
        bad.models[0].environments.push(dup);
        assert!(matches!(
            r.apply(&bad),
            Err(SpecError::DuplicateEnvironment { .. })
        ));
        // Hosts collide without regard to case, across models and environments.
        let mut bad = spec(0, &[]);
        let mut other = bad.models[0].clone();
        other.id = "n".into();
        other.hosts = vec!["M.Example".into()];
        other.environments.iter_mut().for_each(|e| e.hosts.clear());
        bad.models.push(other);
        let err = r.apply(&bad).unwrap_err();
        assert_eq!(
            err,
            SpecError::DuplicateHost {
                host: "M.Example".into()
            }
        );
        assert_eq!(r.load().version, v);
    }

    #[test]
    fn replicas_that_leave_are_followed_until_their_last_request_ends() {
        let r = Router::new(Metrics::new());
        r.apply(&spec(100_000, &["127.0.0.1:2001"])).unwrap();
        let leaving = r
            .replica("m", "v2", "127.0.0.1:2001".parse().unwrap())
            .unwrap();
        leaving.begin_request();
        r.apply(&spec(100_000, &[])).unwrap();
        assert!(r
            .replica("m", "v2", "127.0.0.1:2001".parse().unwrap())
            .is_none());
        let busy = r.retired_in_flight();
        assert_eq!(busy.len(), 1, "{busy:?}");
        assert_eq!((busy[0].1.as_str(), busy[0].3), ("v2", 1));
        leaving.end_request();
        assert!(r.retired_in_flight().is_empty());
        // A model removed whole: its replicas are followed the same way.
        let gone = r
            .replica("m", "v1", "127.0.0.1:1001".parse().unwrap())
            .unwrap();
        gone.begin_request();
        r.apply(&RoutingSpec { models: vec![] }).unwrap();
        assert_eq!(r.retired_in_flight().len(), 1);
        gone.end_request();
        drop((leaving, gone));
        assert!(r.retired_in_flight().is_empty());
    }

    #[test]
    fn series_of_removed_pools_disappear() {
        let metrics = Metrics::new();
        let r = Router::new(metrics.clone());
        r.apply(&spec(100_000, &["127.0.0.1:2001"])).unwrap();
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(text.contains("switchyard_traffic_weight{deployment=\"v2\",environment=\"production\",model=\"m\"} 0.1"), "{text}");
        let mut s = spec(0, &[]);
        s.models[0].environments[1].weights.remove("v2");
        r.apply(&s).unwrap();
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(
            !text.contains("deployment=\"v2\",environment=\"production\""),
            "{text}"
        );
        assert!(
            text.contains("deployment=\"v2\",environment=\"staging\""),
            "{text}"
        );
    }
}

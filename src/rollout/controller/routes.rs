//! Routing-spec building: the data plane's description of the current state. Ready replicas
//! only; weights from fixed splits, current deployments and promotion percents, and never
//! weight on an empty pool while another weighted pool could serve.

use std::collections::BTreeMap;

use super::state::State;
use super::Controller;
use crate::routing::spec::{DeploymentSpec, EnvironmentSpec, ModelSpec, WEIGHT_SCALE};
use crate::routing::RoutingSpec;

impl Controller {
    /// Installs the routing for the state if it differs from the last one installed. On a
    /// shared store routing waits for the commit instead ([`Self::route_now`] after it).
    pub(super) fn reroute(&self, st: &mut State) {
        if self.cluster.get().is_none() {
            self.route_now(st);
        }
    }

    pub(super) fn route_now(&self, st: &mut State) {
        let spec = build_spec(st);
        if st.last_spec.as_ref() != Some(&spec) {
            match self.router.apply(&spec) {
                Ok(_) => st.last_spec = Some(spec),
                Err(e) => tracing::error!(error = %e, "routing update rejected"),
            }
        }
    }
}

/// The routing snapshot description for the current state: ready replicas only; weights from
/// fixed splits, current deployments and promotion percents.
pub(super) fn build_spec(st: &State) -> RoutingSpec {
    let mut spec = RoutingSpec::default();
    for m in &st.models {
        let ready: BTreeMap<&str, Vec<std::net::SocketAddr>> = m
            .deployments
            .iter()
            .filter(|d| d.active)
            .map(|d| (d.id.as_str(), d.provider.status().ready))
            .collect();
        let environments = m
            .environments
            .iter()
            .map(|e| {
                let mut weights: BTreeMap<String, u32> = match (&e.fixed, &e.promotion, &e.current)
                {
                    (Some(w), _, _) => w.clone(),
                    (None, Some(p), _) if !p.machine.status.is_terminal() => {
                        let to_new = p.machine.percent.min(100) * (WEIGHT_SCALE / 100);
                        [
                            (p.previous.clone(), WEIGHT_SCALE - to_new),
                            (p.candidate.clone(), to_new),
                        ]
                        .into_iter()
                        .collect()
                    }
                    (None, _, Some(c)) => [(c.clone(), WEIGHT_SCALE)].into_iter().collect(),
                    (None, _, None) => BTreeMap::new(),
                };
                weights.retain(|d, _| ready.contains_key(d.as_str()));
                shift_off_empty(&mut weights, &ready);
                EnvironmentSpec {
                    name: e.name.clone(),
                    hosts: e.hosts.clone(),
                    weights,
                }
            })
            .collect();
        spec.models.push(ModelSpec {
            id: m.id.clone(),
            hosts: m.hosts.clone(),
            deployments: m
                .deployments
                .iter()
                .filter(|d| d.active)
                .map(|d| DeploymentSpec {
                    id: d.id.clone(),
                    replicas: ready.get(d.id.as_str()).cloned().unwrap_or_default(),
                })
                .collect(),
            environments,
        });
    }
    spec
}

/// Moves weight off deployments with no ready replica onto those that have some, so a split
/// never sends traffic to an empty pool while another pool could serve it.
fn shift_off_empty(
    weights: &mut BTreeMap<String, u32>,
    ready: &BTreeMap<&str, Vec<std::net::SocketAddr>>,
) {
    let empty = |d: &str| ready.get(d).is_none_or(|r| r.is_empty());
    let stranded: u32 = weights
        .iter()
        .filter(|(d, w)| **w > 0 && empty(d))
        .map(|(_, w)| *w)
        .sum();
    if stranded == 0 {
        return;
    }
    let serving: u32 = weights
        .iter()
        .filter(|(d, _)| !empty(d))
        .map(|(_, w)| *w)
        .sum();
    if serving == 0 {
        return; // nothing can serve: leave it, requests get a clear 503
    }
    let total = stranded + serving;
    let mut given = 0;
    let last = weights
        .iter()
        .filter(|(d, w)| !empty(d) && **w > 0)
        .map(|(d, _)| d.clone())
        .next_back();
    for (d, w) in weights.iter_mut() {
        if empty(d) {
            *w = 0;
        } else if Some(d) != last.as_ref() {
            *w = (u64::from(*w) * u64::from(total) / u64::from(serving)) as u32;
            given += *w;
        }
    }
    if let Some(d) = last {
        if let Some(w) = weights.get_mut(&d) {
            *w = total - given;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(list: &[(&'static str, usize)]) -> BTreeMap<&'static str, Vec<std::net::SocketAddr>> {
        list.iter()
            .map(|(d, n)| {
                (
                    *d,
                    (0..*n)
                        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn weight_on_an_empty_pool_moves_to_a_serving_one() {
        let mut w: BTreeMap<String, u32> = [("v1".into(), 600_000), ("v2".into(), 400_000)]
            .into_iter()
            .collect();
        shift_off_empty(&mut w, &ready(&[("v1", 2), ("v2", 0)]));
        assert_eq!(w["v1"], WEIGHT_SCALE);
        assert_eq!(w["v2"], 0);
        let mut w: BTreeMap<String, u32> = [
            ("a".into(), 500_000),
            ("b".into(), 250_000),
            ("c".into(), 250_000),
        ]
        .into_iter()
        .collect();
        shift_off_empty(&mut w, &ready(&[("a", 1), ("b", 1), ("c", 0)]));
        assert_eq!(w.values().sum::<u32>(), WEIGHT_SCALE);
        assert_eq!(w["c"], 0);
        assert!(w["a"] > w["b"]);
        let mut w: BTreeMap<String, u32> = [("v1".into(), WEIGHT_SCALE)].into_iter().collect();
        shift_off_empty(&mut w, &ready(&[("v1", 0)]));
        assert_eq!(w["v1"], WEIGHT_SCALE, "nothing can serve: left as is");
    }
}

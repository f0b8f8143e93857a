#!/usr/bin/env bash
# Propagation: how long after the leader commits a change every other instance serves it.
# Starts etcd (one member, or MEMBERS=3), three switchyard instances on it, two static replicas
# per deployment, then promotes v2 and v1 back and forth (PROMOTIONS times, 2 traffic steps
# each plus the scale steps around them) through a follower, and prints each follower's
# commit-to-swap delay (p50, p99, max over every record it applied) from GET /v1/cluster.
#
#   bash benches/cluster.sh                   # 30 promotions: 60 traffic steps
#   MEMBERS=3 PROMOTIONS=30 bash benches/cluster.sh
set -euo pipefail

PROMOTIONS=${PROMOTIONS:-30}
MEMBERS=${MEMBERS:-1}
PORT_BASE=${PORT_BASE:-18400}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=cluster
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

PIDS=()
WORK=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all "${PIDS[@]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v etcd >/dev/null || {
    [[ $EUID -eq 0 ]] || die "etcd missing; apt-get install etcd-server"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
}
build_switchyard
BIN=target/release/switchyard
WORK=$(mktemp -d)
KEY=bench-cluster-key-0123456789
export SWITCHYARD_API_KEY=$KEY

cluster="" endpoints=""
for i in $(seq 0 $((MEMBERS - 1))); do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((PORT_BASE + 50 + i))"
    endpoints+="${endpoints:+,}127.0.0.1:$((PORT_BASE + 40 + i))"
done
for i in $(seq 0 $((MEMBERS - 1))); do
    etcd --name "e$i" --data-dir "$WORK/e$i" \
        --listen-client-urls "http://127.0.0.1:$((PORT_BASE + 40 + i))" \
        --advertise-client-urls "http://127.0.0.1:$((PORT_BASE + 40 + i))" \
        --listen-peer-urls "http://127.0.0.1:$((PORT_BASE + 50 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((PORT_BASE + 50 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --heartbeat-interval 50 --election-timeout 500 >"$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!)
done
for i in $(seq 0 $((MEMBERS - 1))); do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$((PORT_BASE + 40 + i))/health" | grep -q true && break
        sleep 0.1
    done
done

for p in 1 2 3 4; do
    v=v1; ((p > 2)) && v=v2
    $BIN replica --port $((PORT_BASE + p)) --version $v --latency-ms 0 >/dev/null 2>&1 &
    PIDS+=($!)
done
cat >"$WORK/c.toml" <<EOF
[[models]]
id = "m"
[[models.deployments]]
id = "v1"
replicas = ["127.0.0.1:$((PORT_BASE + 1))", "127.0.0.1:$((PORT_BASE + 2))"]
[[models.deployments]]
id = "v2"
replicas = ["127.0.0.1:$((PORT_BASE + 3))", "127.0.0.1:$((PORT_BASE + 4))"]
[[models.environments]]
name = "production"
current = "v1"
[models.environments.promotion_settings]
rolling_deploy = true
[models.environments.promotion_settings.rolling_deploy_config]
max_surge_percent = 50
EOF
for n in 0 1 2; do
    $BIN serve --config "$WORK/c.toml" --store "etcd://$endpoints" --instance-name "i$n" \
        --listen "127.0.0.1:$((PORT_BASE + 10 + n))" --admin-listen "127.0.0.1:$((PORT_BASE + 20 + n))" \
        >"$WORK/i$n.log" 2>&1 &
    PIDS+=($!)
    [[ $n == 0 ]] && sleep 2 # i0 leads
done
ADMIN=http://127.0.0.1:$((PORT_BASE + 21))
for _ in $(seq 100); do curl -sf -H "Authorization: Api-Key $KEY" "$ADMIN/v1/cluster" >/dev/null && break; sleep 0.1; done

api() { curl -sf -H "Authorization: Api-Key $KEY" -H 'content-type: application/json' "$@"; }
status() { api "$ADMIN/v1/models/m/environments/production" | python3 -c 'import json,sys; p=json.load(sys.stdin).get("in_progress_promotion") or {}; print(p.get("status","NONE"))'; }
target=v2
for n in $(seq "$PROMOTIONS"); do
    api -X POST "$ADMIN/v1/models/m/environments/production/promote" -d "{\"deployment_id\":\"$target\"}" >/dev/null ||
        die "promotion $n refused"
    for _ in $(seq 300); do [[ $(status) == SUCCEEDED ]] && break; sleep 0.05; done
    [[ $(status) == SUCCEEDED ]] || die "promotion $n did not finish"
    [[ $target == v2 ]] && target=v1 || target=v2
    ((n % 10 == 0)) && log "$n promotions"
done
sleep 0.5
echo "commit-to-swap delay on each follower over $PROMOTIONS promotions ($((PROMOTIONS * 2)) traffic steps), $MEMBERS etcd member(s):"
for n in 1 2; do
    api "http://127.0.0.1:$((PORT_BASE + 20 + n))/v1/cluster" | python3 -c '
import json, sys
c = json.load(sys.stdin)
lag = c["apply_lag"] or {}
print("  %s: %s records, p50 %s ms, p99 %s ms, max %s ms (leader %s)" % (
    c["instance"], lag.get("count", 0), lag.get("p50_ms"), lag.get("p99_ms"), lag.get("max_ms"), c["leader"]))'
done

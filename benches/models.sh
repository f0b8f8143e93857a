#!/usr/bin/env bash
# What a large configuration costs once its models have served: MODELS models (one Host, one
# deployment, one replica each, as e2e.sh's hosts section), measured idle, then after wrk has
# sent traffic to every model's Host: RSS, the size and CPU of a `/metrics` scrape, the peak
# RSS with several scrapes at once, and how long `/readyz` takes to answer while a scrape is
# being written. With
# BASELINE_BIN, another build is measured the same way, alternated with this one, ROUNDS
# times each. Everything runs on 127.0.0.1 and stops by itself. See benches/README.md.
#
#   bash benches/models.sh
#   BASELINE_BIN=/tmp/old/switchyard SKIP_BUILD=1 bash benches/models.sh
set -euo pipefail

MODELS=${MODELS:-10000}           # models in the configuration
ROUNDS=${ROUNDS:-2}               # instances started per build
DURATION=${DURATION:-8}           # seconds of wrk over every model's Host
SCRAPES=${SCRAPES:-5}             # scrapes timed together, idle and after the traffic
AT_ONCE=${AT_ONCE:-4}             # then this many scrapes at the same time (Prometheus pairs, ad hoc curls)
WORKERS=${WORKERS:-2}             # switchyard --workers
PORT_BASE=${PORT_BASE:-18800}     # ports PORT_BASE+1 .. PORT_BASE+3 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}       # 1 = use the existing target/release/switchyard
KEEP_WORK=${KEEP_WORK:-0}         # 1 = keep the temp dir (configs, logs)
BASELINE_BIN=${BASELINE_BIN:-}    # another build, measured alternately in the same run

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for v in MODELS ROUNDS DURATION SCRAPES AT_ONCE WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "models: $v=${!v} is not a whole number" >&2; exit 2; }
done
((MODELS >= 1 && ROUNDS >= 1 && DURATION >= 1 && SCRAPES >= 1 && WORKERS >= 1)) ||
    { echo "models: need MODELS, ROUNDS, DURATION, SCRAPES and WORKERS >= 1" >&2; exit 2; }

P_V1=$((PORT_BASE + 1))     # nginx upstream (P_V2 is written in its config, unused here)
P_V2=$((PORT_BASE + 4))
P_SY=$((PORT_BASE + 2))     # switchyard proxy
P_ADMIN=$((PORT_BASE + 3))  # switchyard admin

LOG_TAG=models
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
stop_everything_on_exit

ensure_tools
build_switchyard
BIN=$PWD/target/release/switchyard
if [[ -n $BASELINE_BIN ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
fi

WORK=$(mktemp -d /tmp/switchyard-models.XXXXXX)
for p in $P_SY $P_ADMIN; do
    port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
done
start_upstream 4096 "$P_V1" "$P_V2"

{
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nworkers = %s\n' \
        "$P_SY" "$P_ADMIN" "$WORKERS"
    printf 'shutdown_grace_seconds = 1\n[upstream]\nstatic_probe_interval_seconds = 0\n'
    for ((m = 1; m <= MODELS; m++)); do
        printf '[[models]]\nid = "m%d"\nhosts = ["m%d.example"]\n[[models.deployments]]\nid = "v1"\nreplicas = ["127.0.0.1:%s"]\n[[models.environments]]\nname = "production"\ncurrent = "v1"\n' \
            "$m" "$m" "$P_V1"
    done
} >"$WORK/models.toml"
# Each request to the next model's Host, on every connection: each model is served by both
# workers, as under real traffic.
cat >"$WORK/hosts.lua" <<EOF
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/", { Host = "m" .. (i % $MODELS + 1) .. ".example" })
end
EOF

rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
peak_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
scrape() { # PID: "BYTES MS": the last scrape's size, CPU per scrape over SCRAPES of them
    local pid=$1 t0 t1 bytes=0
    t0=$(cpu_ticks "$pid")
    for ((s = 0; s < SCRAPES; s++)); do
        bytes=$(curl -fsS --max-time 60 -o /dev/null -w '%{size_download}' \
            "http://127.0.0.1:$P_ADMIN/metrics") || die "cannot scrape /metrics"
    done
    t1=$(cpu_ticks "$pid")
    awk -v b="$bytes" -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$SCRAPES" \
        'BEGIN { printf "%d %.0f\n", b, 1000 * d / hz / n }'
}

measure() { # NAME BIN ROUND: one instance, idle then served; prints a result line
    local name=$1 bin=$2 round=$3 pid idle_rss idle_bytes idle_ms rps non2xx served_rss bytes ms after peak readyz_ms
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$WORK/models.toml" --ephemeral \
        >"$WORK/$name-$round.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$P_ADMIN/readyz" 120 "$pid" ||
        die "$name with $MODELS models not ready: $(tail -5 "$WORK/$name-$round.log")"
    sleep 3
    idle_rss=$(rss_mib "$pid")
    read -r idle_bytes idle_ms < <(scrape "$pid")
    timeout $((DURATION + 30)) wrk -t2 -c8 -d"${DURATION}s" -s "$WORK/hosts.lua" \
        "http://127.0.0.1:$P_SY/" >"$WORK/wrk-$name-$round.txt" 2>&1 ||
        die "wrk failed: $(tail -3 "$WORK/wrk-$name-$round.txt")"
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk-$name-$round.txt")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/wrk-$name-$round.txt")
    [[ -z $non2xx ]] || die "$name answered $non2xx non-2xx responses: is the upstream up?"
    ((rps * DURATION >= MODELS)) ||
        log "warning: $((rps * DURATION)) requests for $MODELS models: some models were not served"
    sleep 2
    served_rss=$(rss_mib "$pid")
    read -r bytes ms < <(scrape "$pid")
    after=$(rss_mib "$pid")
    local scrapers=() s
    for ((s = 0; s < AT_ONCE; s++)); do
        curl -fsS --max-time 60 -o /dev/null "http://127.0.0.1:$P_ADMIN/metrics" &
        scrapers+=($!)
    done
    for s in "${scrapers[@]}"; do wait "$s" || die "one of $AT_ONCE scrapes at once failed"; done
    peak=$(peak_mib "$pid")
    # /readyz asked 20 ms into a scrape, when the exposition is being written.
    curl -fsS --max-time 60 -o /dev/null "http://127.0.0.1:$P_ADMIN/metrics" &
    local scraper=$!
    sleep 0.02
    readyz_ms=$(curl -fsS --max-time 10 -o /dev/null -w '%{time_total}' \
        "http://127.0.0.1:$P_ADMIN/readyz" | awk '{ printf "%.0f", $1 * 1000 }') ||
        die "/readyz did not answer during a scrape"
    wait "$scraper" || die "the scrape beside /readyz failed"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    printf '%-10s %5d %9d %10d %9d %9d %10d %11d %9d %11d %10d %10d\n' "$name" "$round" "$idle_rss" \
        "$idle_bytes" "$idle_ms" "$rps" "$served_rss" "$bytes" "$ms" "$after" "$peak" "$readyz_ms"
}

log "switchyard $("$BIN" --version | awk '{print $2}'), $MODELS models, workers=$WORKERS; wrk -t2 -c8 ${DURATION}s over every Host; $SCRAPES scrapes per figure"
printf '%-10s %5s %9s %10s %9s %9s %10s %11s %9s %11s %10s %10s\n' build round "idle MiB" "idle B" "idle ms" \
    "req/s" "served MiB" "scrape B" "scrape ms" "after MiB" "peak MiB" "readyz ms"
for ((r = 1; r <= ROUNDS; r++)); do
    [[ -z $BASELINE_BIN ]] || measure baseline "$BASELINE_BIN" "$r"
    measure switchyard "$BIN" "$r"
done
echo "MiB: RSS idle, after the traffic, after the scrapes, and the most it ever was (VmHWM, read after"
echo "AT_ONCE=$AT_ONCE more scrapes at the same time); B: bytes of one scrape; ms: CPU per scrape;"
echo "readyz ms: time for /readyz to answer when asked 20 ms into a scrape"

#!/usr/bin/env bash
# Who pays for a proxied request: CPU per request of the proxy, of the upstream nginx behind it
# and of wrk in front of it, with the machine's idle share, for nginx as a proxy and for
# switchyard with and without `yield_before_sleep`, alternated round by round in one run.
# On a machine where all three share the cores, a proxy that leaves the cores idle more often
# makes every process in the chain pay more per request (each answer costs a sleep and a
# wake-up); this shows it where e2e.sh shows only the proxy's own share. The "wait" columns are
# how long each party's threads sat runnable without a CPU, per request (schedstat run delay,
# read over the middle of each round): where a tail comes from when the cores are shared; and
# "conns", how the client connections sit on the proxy's workers ("6/2").
#
#   bash benches/shares.sh                       # wrk -t2 -c8, 4 rounds of 6 s
#   CONNECTIONS=64 ROUNDS=3 bash benches/shares.sh
#   PIN=1 bash benches/shares.sh                 # switchyard alone on CPU 1 with one worker,
#                                                # everything else on CPU 0: what yielding costs
#                                                # when there is nobody to yield to
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-8}   # wrk -c
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-6}         # seconds per target per round (after a 2 s warm-up)
PIN=${PIN:-0}
PORT_BASE=${PORT_BASE:-18600}   # ports PORT_BASE+1 .. PORT_BASE+16 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for v in CONNECTIONS ROUNDS DURATION PIN PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "shares: $v=${!v} is not a whole number" >&2; exit 2; }
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1)) || { echo "shares: need ROUNDS, DURATION, CONNECTIONS >= 1" >&2; exit 2; }

P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_NGINX=$((PORT_BASE + 3))
LOG_TAG=shares
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit
ensure_tools
ensure_command /usr/bin/time time
build_switchyard
BIN=$PWD/target/release/switchyard
WORK=$(mktemp -d /tmp/switchyard-shares.XXXXXX)

# Everything but switchyard on CPU 0 when pinned (switchyard on CPU 1, one worker).
OTHERS=()
SY_PIN=()
WORKERS=2
if ((PIN)); then
    (($(nproc) >= 2)) || die "PIN=1 needs two CPUs"
    OTHERS=(taskset -c 0)
    SY_PIN=(taskset -c 1)
    WORKERS=1
fi

start_upstream 4096 $P_V1 $P_V2 $P_NGINX
UPSTREAM_PID=${PIDS[-1]}
if ((PIN)); then
    for p in "$UPSTREAM_PID" $(pgrep -P "$UPSTREAM_PID" || true); do taskset -a -p -c 0 "$p" >/dev/null; done
fi
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head "$WORKERS" 4096)
$(nginx_backends)
$(nginx_plain_server "$P_NGINX")
}
EOF
"${SY_PIN[@]}" nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf" >>"$WORK/proxy-error.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$P_NGINX/" 10 "$NGINX_PID" || die "nginx proxy did not answer"

declare -A PID_OF PORT_OF ADMIN_OF
TARGETS=(nginx yield no-yield)
PID_OF[nginx]=$NGINX_PID
PORT_OF[nginx]=$P_NGINX
k=0
for t in yield no-yield; do
    port=$((PORT_BASE + 4 + 2 * k)); admin=$((PORT_BASE + 5 + 2 * k)); k=$((k + 1))
    extra=()
    [[ $t == no-yield ]] && extra=(--no-yield-before-sleep)
    RUST_LOG=warn "${SY_PIN[@]}" "$BIN" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10 \
        --workers "$WORKERS" --ephemeral "${extra[@]}" >"$WORK/switchyard-$t.log" 2>&1 &
    PID_OF[$t]=$!
    PORT_OF[$t]=$port
    ADMIN_OF[$t]=$admin
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$admin/readyz" 15 "$!" || die "switchyard ($t) not ready: $(tail -3 "$WORK/switchyard-$t.log")"
done

run_delay_ns() { # PID...: nanoseconds the threads of these processes and their children waited to run
    local total=0 p f d
    for p in "$@" $(for q in "$@"; do pgrep -P "$q" 2>/dev/null || true; done); do
        for f in /proc/"$p"/task/*/schedstat; do
            read -r _ d _ <"$f" 2>/dev/null || continue
            total=$((total + d))
        done
    done
    echo "$total"
}

client_split() { # TARGET PORT: how the client connections sit on the proxy's workers ("6/2"):
    # nginx's worker processes from ss, switchyard's worker threads from its per-worker gauge
    if [[ $1 == nginx ]]; then
        ss -Htnp state established "( sport = :$2 )" 2>/dev/null |
            grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{ print $1 }' | sort -rn | paste -sd/ -
    else
        curl -sf "http://127.0.0.1:${ADMIN_OF[$1]}/metrics" |
            awk '/^switchyard_worker_client_connections/ { print $2 }' | sort -rn | paste -sd/ -
    fi
}

idle_and_total() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

log "wrk -t2 -c$CONNECTIONS, $ROUNDS rounds of ${DURATION}s per target; $WORKERS workers per proxy; pinned: $PIN"
printf '%-9s %5s %9s %9s %11s %8s %9s %8s %6s %13s %s\n' target round "req/s" "proxy µs" "upstream µs" "wrk µs" "all µs" "p99 ms" "idle%" "wait p/u/w µs" "conns"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        pid=${PID_OF[$t]}
        url="http://127.0.0.1:${PORT_OF[$t]}/"
        timeout 30 "${OTHERS[@]}" wrk -t2 -c"$CONNECTIONS" -d2s "$url" >/dev/null || die "$t: warm-up failed"
        p0=$(cpu_ticks "$pid"); u0=$(cpu_ticks "$UPSTREAM_PID"); read -r i0 t0 < <(idle_and_total)
        /usr/bin/time -f '%U %S' -o "$WORK/wrk.time" timeout $((DURATION + 30)) "${OTHERS[@]}" \
            wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$WORK/wrk.out" &
        runner=$!
        # Run delay over the middle of the round, away from wrk's start and end.
        sleep 1
        wrk_pid=$(pgrep -n -x wrk || true)
        read -r ms0 _ </proc/uptime
        dp0=$(run_delay_ns "$pid"); du0=$(run_delay_ns "$UPSTREAM_PID"); dw0=$(run_delay_ns $wrk_pid)
        sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 2 ? d - 1.5 : d / 2) }')"
        read -r ms1 _ </proc/uptime
        dp1=$(run_delay_ns "$pid"); du1=$(run_delay_ns "$UPSTREAM_PID"); dw1=$(run_delay_ns $wrk_pid)
        split=$(client_split "$t" "${PORT_OF[$t]}")
        wait "$runner" || die "$t: wrk failed"
        p1=$(cpu_ticks "$pid"); u1=$(cpu_ticks "$UPSTREAM_PID"); read -r i1 t1 < <(idle_and_total)
        grep -q 'Non-2xx\|Socket errors' "$WORK/wrk.out" && log "$t: $(grep 'Non-2xx\|Socket errors' "$WORK/wrk.out")"
        requests=$(awk '/ requests in / { print $1 }' "$WORK/wrk.out")
        p99=$(awk "$AWK_MS"' /^ +99%/ { print ms($2) }' "$WORK/wrk.out")
        read -r wu ws <"$WORK/wrk.time"
        awk -v t="$t" -v r="$r" -v n="$requests" -v p=$((p1 - p0)) -v u=$((u1 - u0)) -v wu="$wu" -v ws="$ws" \
            -v d="$DURATION" -v tk="$CLK_TCK" -v p99="$p99" -v id=$((i1 - i0)) -v tt=$((t1 - t0)) \
            -v win="$(awk -v a="$ms0" -v b="$ms1" 'BEGIN { print b - a }')" \
            -v dp=$((dp1 - dp0)) -v du=$((du1 - du0)) -v dw=$((dw1 - dw0)) -v conns="$split" 'BEGIN {
            pu = p / tk * 1e6 / n; uu = u / tk * 1e6 / n; wk = (wu + ws) * 1e6 / n
            inwin = n / d * win   # requests served in the run-delay window, at the rate of the round
            printf "%-9s %5d %9.0f %9.2f %11.2f %8.2f %9.2f %8.2f %6.1f %4.1f/%.1f/%.1f %s\n", t, r, n / d, pu, uu, wk, pu + uu + wk, p99, 100 * id / tt,
                dp / 1e3 / inwin, du / 1e3 / inwin, dw / 1e3 / inwin, conns }'
    done
done

#!/usr/bin/env bash
# How much of a core each proxy worker wants under wrk, at each connection level: the share of
# wall time it ran (user+system) and the share it sat runnable waiting for a CPU (schedstat run
# delay), for switchyard with one worker, with two, and nginx with two worker processes, same
# run. "Demand" is the sum: a worker near 100 % would use a core of its own if it had one.
#
# The question it answers (issue 15): could a load-aware placement (consolidate connections on
# one worker at light load, spread them when it saturates) keep one worker at 8 connections and
# two at 64? Only if one worker's demand differs between those levels. Under wrk's closed loop
# it does not; see benches/README.md, "Issue 15, eighteenth pass".
#
#   bash benches/worker-demand.sh                    # wrk -t2 at 8, 64, 256 connections, 6 s each
#   CONNECTIONS="8 64" DURATION=10 bash benches/worker-demand.sh
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-"8 64 256"}
DURATION=${DURATION:-6}         # measured seconds per target and level (after a 2 s warm-up)
PORT_BASE=${PORT_BASE:-18700}   # ports PORT_BASE+1 .. PORT_BASE+7 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 2)) || { echo "worker-demand: DURATION=$DURATION: want a whole number >= 2" >&2; exit 2; }
for c in $CONNECTIONS; do
    [[ $c =~ ^[0-9]+$ ]] && ((c >= 2)) || { echo "worker-demand: CONNECTIONS has '$c': want whole numbers >= 2" >&2; exit 2; }
done

P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_NGINX=$((PORT_BASE + 3))
LOG_TAG=worker-demand
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit
ensure_tools
build_switchyard
BIN=$PWD/target/release/switchyard
WORK=$(mktemp -d /tmp/switchyard-demand.XXXXXX)

start_upstream 4096 $P_V1 $P_V2 $P_NGINX $((PORT_BASE + 4)) $((PORT_BASE + 5)) $((PORT_BASE + 6)) $((PORT_BASE + 7))
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head 2 4096)
$(nginx_backends)
$(nginx_plain_server "$P_NGINX")
}
EOF
nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf" >>"$WORK/proxy-error.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$P_NGINX/" 10 "$NGINX_PID" || die "nginx proxy did not answer"

declare -A PID_OF PORT_OF
TARGETS=(switchyard-1 switchyard-2 nginx)
PID_OF[nginx]=$NGINX_PID
PORT_OF[nginx]=$P_NGINX
for w in 1 2; do
    port=$((PORT_BASE + 2 + 2 * w)); admin=$((PORT_BASE + 3 + 2 * w))
    RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10 \
        --workers "$w" --ephemeral >"$WORK/switchyard-$w.log" 2>&1 &
    PID_OF[switchyard-$w]=$!
    PORT_OF[switchyard-$w]=$port
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$admin/readyz" 15 "$!" || die "switchyard ($w workers) not ready: $(tail -3 "$WORK/switchyard-$w.log")"
done

worker_stats() { # TARGET: "ID TICKS WAIT_NS" per proxy worker (switchyard's worker threads, nginx's worker processes)
    local f comm
    if [[ $1 == nginx ]]; then
        for p in $(pgrep -P "$NGINX_PID"); do
            [[ $(cat /proc/"$p"/cmdline 2>/dev/null | tr '\0' ' ') == *"worker process"* ]] || continue
            set_stat "$p" "/proc/$p/stat" "/proc/$p/schedstat"
        done
    else
        for f in /proc/"${PID_OF[$1]}"/task/*; do
            comm=$(cat "$f/comm" 2>/dev/null) || continue
            [[ $comm == switchyard-work* ]] || continue
            set_stat "${f##*/}" "$f/stat" "$f/schedstat"
        done
    fi
}

set_stat() { # ID STAT SCHEDSTAT
    local stat rest s d
    stat=$(cat "$2" 2>/dev/null) || return 0
    rest=${stat##*) }                # fields after the command name, from field 3 (state) on
    read -ra s <<<"$rest"
    read -r _ d _ <"$3" 2>/dev/null || return 0
    echo "$1 $((s[11] + s[12])) $d"  # utime, stime (fields 14, 15)
}

HZ=$(getconf CLK_TCK)
log "wrk -t2, ${DURATION}s per target and level; per worker: ran% + waited% = demand% of one core"
printf '%-13s %5s %9s %7s  %s\n' target conns "req/s" "p99 ms" "per worker: ran+waited=demand (%)"
for c in $CONNECTIONS; do
    for t in "${TARGETS[@]}"; do
        url="http://127.0.0.1:${PORT_OF[$t]}/"
        timeout 30 wrk -t2 -c"$c" -d2s "$url" >/dev/null || die "$t: warm-up failed"
        timeout $((DURATION + 30)) wrk -t2 -c"$c" -d"${DURATION}s" --latency "$url" >"$WORK/wrk.out" &
        runner=$!
        # Over the middle of the run, away from wrk's connects and its end.
        sleep 1
        read -r up0 _ </proc/uptime
        declare -A ticks0=() wait0=()
        while read -r id tk wt; do ticks0[$id]=$tk; wait0[$id]=$wt; done < <(worker_stats "$t")
        sleep $((DURATION - 2))
        read -r up1 _ </proc/uptime
        cols=""
        while read -r id tk wt; do
            [[ -n ${ticks0[$id]:-} ]] || continue
            cols+=$(awk -v t="$((tk - ticks0[$id]))" -v w="$((wt - wait0[$id]))" -v hz="$HZ" -v a="$up0" -v b="$up1" \
                'BEGIN { s = b - a; r = 100 * t / hz / s; q = 100 * w / 1e9 / s; printf " %.0f+%.0f=%.0f", r, q, r + q }')
        done < <(worker_stats "$t")
        wait "$runner" || die "$t: wrk failed"
        grep -q 'Non-2xx\|Socket errors' "$WORK/wrk.out" && log "$t: $(grep 'Non-2xx\|Socket errors' "$WORK/wrk.out")"
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk.out")
        p99=$(awk "$AWK_MS"' /^ +99%/ { printf "%.3f", ms($2) }' "$WORK/wrk.out")
        printf '%-13s %5s %9s %7s %s\n' "$t" "$c" "$rps" "$p99" "$cols"
    done
done

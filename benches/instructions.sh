#!/usr/bin/env bash
# User-space instructions per proxied request, switchyard against nginx, counted by valgrind's
# callgrind: a figure that does not move with the load on a shared machine, unlike CPU time.
# Both proxies run one worker under callgrind in front of the same nginx upstream (90/10 split);
# counters are zeroed after a warm-up and dumped after a fixed load, and the instructions
# between are divided by the requests served. Kernel work is not counted: both make the same
# system calls per request (see benches/README.md), so this is where the two differ.
# STREAMS=N counts per server-sent event instead: N streams at RATE events/s each from
# switchyard's built-in replica, through both proxies (nginx with proxy_buffering off).
#
#   bash benches/instructions.sh
#   SECONDS_LOAD=4 CONNECTIONS=8 bash benches/instructions.sh
#   STREAMS=50 bash benches/instructions.sh
#   METHOD=POST bash benches/instructions.sh   # a JSON body on every request, as e2e's post section
#   SCHEME=https bash benches/instructions.sh  # clients over TLS: rustls against OpenSSL, as e2e's tls section
#   CACHE_SIM=1 bash benches/instructions.sh   # also callgrind's cache and branch models, per request
set -euo pipefail

SECONDS_LOAD=${SECONDS_LOAD:-8}  # seconds of measured load per proxy (wrk -t1)
CONNECTIONS=${CONNECTIONS:-16}   # wrk -c
STREAMS=${STREAMS:-0}            # >0: SSE streams instead of wrk requests
METHOD=${METHOD:-GET}            # GET, or POST with a JSON body to /v1/completions
SCHEME=${SCHEME:-http}           # http, or https: both proxies terminate TLS with one P-256 certificate
RATE=${RATE:-50}                 # events per second per stream (with STREAMS)
PORT_BASE=${PORT_BASE:-18400}    # ports PORT_BASE+1 .. PORT_BASE+5 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-}  # another build to count instead of target/release/switchyard
CACHE_SIM=${CACHE_SIM:-0}        # 1: also callgrind's cache and branch models per request (plain HTTP requests only)

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $METHOD == GET || $METHOD == POST ]] || { echo "instructions: METHOD=$METHOD: use GET or POST" >&2; exit 2; }
[[ $SCHEME == http || $SCHEME == https ]] || { echo "instructions: SCHEME=$SCHEME: use http or https" >&2; exit 2; }
for v in SECONDS_LOAD CONNECTIONS PORT_BASE STREAMS RATE CACHE_SIM; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "instructions: $v=${!v} is not a whole number" >&2; exit 2; }
done

P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_NGINX=$((PORT_BASE + 3))
P_SY=$((PORT_BASE + 4)); P_ADMIN=$((PORT_BASE + 5))
LOG_TAG=instructions
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit

ensure_tools
ensure_valgrind
build_switchyard
BIN=${SWITCHYARD_BIN:-$PWD/target/release/switchyard}
WORK=$(mktemp -d /tmp/switchyard-instr.XXXXXX)
setup_scheme
WRK_SCRIPT=()
WRK_PATH=""
if [[ $METHOD == POST ]]; then
    write_post_script "$WORK/post.lua"
    WRK_SCRIPT=(-s "$WORK/post.lua")
    WRK_PATH=/v1/completions
fi
if ((STREAMS == 0)); then
    start_upstream 4096 $P_V1 $P_V2 $P_NGINX $P_SY $P_ADMIN
    UPSTREAMS=(--upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10)
    BACKENDS=$(nginx_backends)
    LOCATION=$(nginx_proxy_location)
    READY_PATH=/
else
    ((STREAMS * 4 + 200 <= $(ulimit -n))) || die "open-file limit $(ulimit -n) is too low for STREAMS=$STREAMS"
    for p in $P_V1 $P_NGINX $P_SY $P_ADMIN; do
        port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
    done
    # The replica sends one event per token, every 1/RATE s, from the first byte on.
    "$BIN" replica --host 127.0.0.1 --port "$P_V1" --tokens-per-second "$RATE" --latency-ms 0 \
        >"$WORK/replica.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$P_V1/healthz" 10 "$!" || die "replica did not answer: $(tail -3 "$WORK/replica.log")"
    mkdir -p "$WORK/tmp"
    UPSTREAMS=(--upstream "v1=127.0.0.1:$P_V1")
    READY_PATH=/healthz
    BACKENDS="    upstream backends { server 127.0.0.1:$P_V1; keepalive 1024; keepalive_requests 100000; }"
    LOCATION="        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }"
fi

# One nginx process, no master: callgrind then follows the process that serves.
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head 1 4096 "master_process off;")
$BACKENDS
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096$LISTEN_SSL;
$LOCATION
    }
}
EOF

# Over TLS every wrk run opens CONNECTIONS connections, each with a handshake, inside the
# counted window. Two windows of different length separate the two costs: instructions =
# CONNECTIONS x handshake + requests x request, solved for both unknowns.
WINDOWS=("$SECONDS_LOAD")
[[ $SCHEME == https ]] && WINDOWS=("$SECONDS_LOAD" $((SECONDS_LOAD * 2)))

dumped_instructions() { # FILE: the instruction total of one callgrind dump
    awk '/^summary:/ { s = $2 } END { print s + 0 }' "$1"
}
VALGRIND_SIM=()
# The last level as a common 8 MiB, 16-way cache: valgrind otherwise copies what the host reports,
# which on these VMs is a direct-mapped 256 MiB cache that turns address aliasing into misses.
((CACHE_SIM)) && VALGRIND_SIM=(--cache-sim=yes --branch-sim=yes --LL=8388608,16,64)

count() { # NAME URL READY_URL -- COMMAND...: writes "instructions requests" per window to $WORK/NAME.result
    local name=$1 url=$2 ready=$3
    shift 4
    valgrind --tool=callgrind "${VALGRIND_SIM[@]}" --callgrind-out-file="$WORK/$name.%p.out" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$ready" 60 "$pid" || die "$name did not answer under valgrind: $(tail -5 "$WORK/$name.log")"
    : >"$WORK/$name.result"
    local reqs ir
    if ((STREAMS == 0)); then
        timeout 60 wrk "${WRK_SCRIPT[@]}" -t1 -c"$CONNECTIONS" -d3s "$url$WRK_PATH" >/dev/null || die "$name: warm-up failed"
        local w=0 secs
        for secs in "${WINDOWS[@]}"; do
            w=$((w + 1))
            callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z $pid failed"
            timeout $((secs + 60)) wrk "${WRK_SCRIPT[@]}" -t1 -c"$CONNECTIONS" -d"${secs}s" "$url$WRK_PATH" >"$WORK/$name.$w.wrk" 2>&1 ||
                die "$name: wrk failed: $(cat "$WORK/$name.$w.wrk")"
            callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
            reqs=$(awk '/ requests in / { print $1 }' "$WORK/$name.$w.wrk")
            grep -q 'Non-2xx\|Socket errors' "$WORK/$name.$w.wrk" && log "$name: $(grep 'Non-2xx\|Socket errors' "$WORK/$name.$w.wrk")"
            # Dump number w holds window w.
            ir=$(dumped_instructions "$WORK/$name.$pid.out.$w" 2>/dev/null || echo 0)
            [[ -n $reqs && $ir -gt 0 ]] || die "$name: no count in window $w (requests '$reqs', instructions '$ir')"
            echo "$ir $reqs" >>"$WORK/$name.result"
            # Every event of the dump (with CACHE_SIM: misses and mispredictions too), per request.
            awk -v r="$reqs" '/^events:/ { for (i = 2; i <= NF; i++) ev[i] = $i }
                /^summary:/ { for (i = 2; i <= NF; i++) printf "%s %.1f\n", ev[i], $i / r }' \
                "$WORK/$name.$pid.out.$w" >"$WORK/$name.$w.events"
        done
    else
        # The streams open during a 4-second warm-up; the counters cover SECONDS_LOAD seconds
        # after it while the load generator keeps every stream going (it starts the next one
        # when one ends). Events are counted at the replica's pace, STREAMS x RATE per second:
        # the load generator counts whole streams, which end unevenly across the window.
        timeout $((SECONDS_LOAD + 90)) "$BIN" loadtest "$url" --concurrency "$STREAMS" --stream true \
            --max-tokens "$RATE" --prompt-words 8 --max-in-flight "$STREAMS" --warmup 4 \
            --duration $((SECONDS_LOAD + 2)) --timeout 60 --json "$WORK/$name.json" --quiet >"$WORK/$name.lt" 2>&1 &
        WRK_PID=$!
        sleep 4
        callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z $pid failed"
        sleep "$SECONDS_LOAD"
        callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
        wait "$WRK_PID" || { WRK_PID=""; die "$name: loadtest failed: $(tail -5 "$WORK/$name.lt")"; }
        WRK_PID=""
        local broken
        broken=$(python3 -c 'import json, sys; o = json.load(open(sys.argv[1]))["summary"]["overall"]; print(o["broken_streams"] + o["errors"])' "$WORK/$name.json") ||
            die "$name: cannot read $WORK/$name.json"
        ((broken == 0)) || die "$name: $broken streams broke or failed (see $WORK/$name.json)"
        reqs=$((STREAMS * RATE * SECONDS_LOAD))
        ir=$(dumped_instructions "$WORK/$name.$pid.out.1" 2>/dev/null || echo 0)
        [[ $ir -gt 0 ]] || die "$name: no count"
        echo "$ir $reqs" >"$WORK/$name.result"
    fi
    kill -TERM "$pid" 2>/dev/null || true
}

# (valgrind runs the program itself: a wrapper such as env would leave the real one uncounted.)
export RUST_LOG=warn
count switchyard "$SCHEME://127.0.0.1:$P_SY" "http://127.0.0.1:$P_ADMIN/readyz" -- "$BIN" serve --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    "${UPSTREAMS[@]}" "${TLS_ARGS[@]}" --workers 1 --shutdown-grace-seconds 1 --ephemeral
count nginx "$SCHEME://127.0.0.1:$P_NGINX" "$SCHEME://127.0.0.1:$P_NGINX$READY_PATH" -- \
    nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf"
echo
if ((STREAMS == 0)); then
    unit=request
    echo "== user-space instructions per proxied request ($METHOD over $SCHEME, callgrind, wrk -t1 -c$CONNECTIONS, ${SECONDS_LOAD}s each) =="
else
    unit=event
    echo "== user-space instructions per server-sent event (callgrind, $STREAMS streams x $RATE events/s, ${SECONDS_LOAD}s each) =="
fi
if [[ $SCHEME == https ]]; then
    echo "(two windows of ${WINDOWS[*]} s, each opening $CONNECTIONS connections: per request and per handshake solved from both)"
fi
# One window: instructions / requests. Two: the request and handshake costs that fit both.
awk -v u="$unit" -v c="$CONNECTIONS" '
    FNR == 1 { n++; name[n] = (FILENAME ~ /switchyard\.result$/) ? "switchyard" : "nginx" }
    { ir[n, FNR] = $1; rq[n, FNR] = $2; w[n] = FNR }
    END {
        for (i = 1; i <= n; i++) {
            if (w[i] == 1) {
                per[i] = ir[i, 1] / rq[i, 1]
                printf "%-11s %10d instructions / %7d %ss = %8.0f per %s\n", name[i], ir[i, 1], rq[i, 1], u, per[i], u
            } else {
                if (rq[i, 2] <= rq[i, 1]) { print name[i] ": the longer window served no more requests" > "/dev/stderr"; exit 1 }
                per[i] = (ir[i, 2] - ir[i, 1]) / (rq[i, 2] - rq[i, 1])
                hs = (ir[i, 1] - rq[i, 1] * per[i]) / c
                printf "%-11s windows %d + %d requests: %8.0f per %s, %9.0f per handshake\n", name[i], rq[i, 1], rq[i, 2], per[i], u, hs
            }
        }
        printf "switchyard/nginx: %.3f\n", per[1] / per[2]
    }' "$WORK/switchyard.result" "$WORK/nginx.result"
if ((CACHE_SIM)) && [[ $STREAMS == 0 && $SCHEME == http ]]; then
    # callgrind's models (first-level caches and a last level sized from this machine, a simple
    # branch predictor), not the hardware's counters: comparable between the two proxies only.
    # Ir instructions, Dr/Dw data reads/writes, I1mr/D1mr/D1mw first-level misses, ILmr/DLmr/DLmw
    # last-level misses, Bc/Bcm conditional branches and mispredictions, Bi/Bim indirect ones.
    echo
    echo "== callgrind's cache and branch models, per request (window 1) =="
    printf "%-6s %12s %12s %9s\n" event switchyard nginx ratio
    # The last row weighs them as KCachegrind's cycle estimate does: Ir + 10 Bm + 10 L1m + 100 LLm.
    join <(sort "$WORK/switchyard.1.events") <(sort "$WORK/nginx.1.events") |
        awk '{ printf "%-6s %12.1f %12.1f %9.3f\n", $1, $2, $3, ($3 > 0 ? $2 / $3 : 0)
               w = ($1 == "Ir") ? 1 : ($1 ~ /^(Bcm|Bim|I1mr|D1mr|D1mw)$/) ? 10 : ($1 ~ /^(ILmr|DLmr|DLmw)$/) ? 100 : 0
               a += w * $2; b += w * $3 }
             END { printf "%-6s %12.0f %12.0f %9.3f\n", "cycles", a, b, (b > 0 ? a / b : 0) }'
fi

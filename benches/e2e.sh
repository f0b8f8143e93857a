#!/usr/bin/env bash
# End-to-end throughput and latency: wrk against the upstream directly, against nginx as a
# weighted proxy, and against switchyard with the same 90/10 split, in interleaved rounds.
# Everything runs on 127.0.0.1 and stops by itself. See benches/README.md.
#
#   bash benches/e2e.sh                      # 5 rounds of 10 s per target
#   DURATION=3 ROUNDS=2 bash benches/e2e.sh  # a quick look
#   BASELINE_BIN=/path/to/older/switchyard bash benches/e2e.sh
#                                            # also run another build, same config, interleaved:
#                                            # the cost of a change, as a ratio in the same run
set -euo pipefail

DURATION=${DURATION:-10}        # seconds per measured wrk run
WARMUP=${WARMUP:-2}             # seconds of warm-up before each measured run (0 = none)
ROUNDS=${ROUNDS:-5}             # interleaved rounds (direct, nginx, switchyard)
CONNECTIONS=${CONNECTIONS:-64}  # wrk -c
THREADS=${THREADS:-2}           # wrk -t
WORKERS=${WORKERS:-2}           # switchyard --workers and nginx proxy worker_processes
PORT_BASE=${PORT_BASE:-18100}   # ports PORT_BASE+1 .. PORT_BASE+5 on 127.0.0.1
STRICT=${STRICT:-0}             # 1 = exit 1 when the acceptance check fails
SKIP_BUILD=${SKIP_BUILD:-0}     # 1 = use the existing target/release/switchyard
KEEP_WORK=${KEEP_WORK:-0}       # 1 = keep the temp dir (configs, logs, raw wrk output)
MIN_RPS_RATIO=${MIN_RPS_RATIO:-0.85}
MAX_P99_RATIO=${MAX_P99_RATIO:-1.3}
BASELINE_BIN=${BASELINE_BIN:-}  # another switchyard binary to measure alongside (ports +6, +7)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for v in DURATION WARMUP ROUNDS CONNECTIONS THREADS WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "e2e: $v=${!v} is not a whole number" >&2; exit 2; }
done
(( DURATION >= 1 && ROUNDS >= 1 && CONNECTIONS >= THREADS && THREADS >= 1 )) ||
    { echo "e2e: need DURATION>=1, ROUNDS>=1, CONNECTIONS>=THREADS>=1" >&2; exit 2; }

P_V1=$((PORT_BASE + 1))     # nginx upstream, deployment v1
P_V2=$((PORT_BASE + 2))     # nginx upstream, deployment v2
P_NGINX=$((PORT_BASE + 3))  # nginx proxy baseline
P_SY=$((PORT_BASE + 4))     # switchyard proxy
P_ADMIN=$((PORT_BASE + 5))  # switchyard admin
P_BASE=$((PORT_BASE + 6))   # baseline switchyard build (BASELINE_BIN)
P_BASE_ADMIN=$((PORT_BASE + 7))

LOG_TAG=e2e
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# Processes, and cleaning them up whatever happens.

PIDS=()
WRK_PID=""   # wrk runs in the background so that a signal interrupts `wait` at once
WORK=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local all=() p
    for p in "${PIDS[@]}" ${WRK_PID:+"$WRK_PID"}; do
        all+=("$p")
        # nginx workers are children of the master: remember them before it goes.
        for c in $(pgrep -P "$p" 2>/dev/null || true); do all+=("$c"); done
    done
    stop_all "${all[@]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_nginx() { # NAME: runs $WORK/NAME.conf in the foreground (daemon off) as our child
    local name=$1
    nginx -t -q -p "$WORK" -e "$WORK/$name-error.log" -c "$WORK/$name.conf" ||
        die "nginx $name config test failed (see $WORK/$name.conf)"
    nginx -p "$WORK" -e "$WORK/$name-error.log" -c "$WORK/$name.conf" \
        >>"$WORK/$name-error.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}

write_proxy_conf() {
    cat >"$WORK/proxy.conf" <<EOF
$(nginx_user_line)
daemon off;
worker_processes $WORKERS;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    $(nginx_temp_paths proxy)
    upstream backends {
        server 127.0.0.1:$P_V1 weight=9;
        server 127.0.0.1:$P_V2 weight=1;
        keepalive 256;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# ---------------------------------------------------------------------------------------------
# wrk.

# Prints: rps p50_ms p99_ms requests non2xx socket_errors
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return n
    }
    /^[ \t]*50%/ { p50 = ms($2) }
    /^[ \t]*99%/ { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); se = $4 + $6 + $8 + $10 }
    /^Requests\/sec:/ { rps = $2 }
    END {
        if (rps == "" || p99 == "") exit 1
        printf "%.2f %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx, se
    }' "$1"
}

run_wrk() { # OUTFILE URL SECONDS
    local out=$1 url=$2 secs=$3
    timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency "$url" \
        >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=""; cat "$out" >&2; die "wrk against $url failed"; }
    WRK_PID=""
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

cpu_ticks() { # PID: user+system clock ticks of the process and its children (nginx workers)
    local total=0 p f a
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }   # fields after "pid (comm) "; utime and stime are fields 14 and 15
        read -r -a a <<<"$f"
        total=$((total + a[11] + a[12]))
    done
    echo "$total"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR % 2) printf "%.3f\n", a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

cpu_busy_pct() { # CPU in use by anything over 1 s, from /proc/stat
    local a b
    read -ra a </proc/stat; sleep 1; read -ra b </proc/stat
    awk -v u1="$((a[1] + a[2] + a[3] + a[6] + a[7]))" -v i1="$((a[4] + a[5]))" \
        -v u2="$((b[1] + b[2] + b[3] + b[6] + b[7]))" -v i2="$((b[4] + b[5]))" \
        'BEGIN { d = (u2 - u1) + (i2 - i1); printf "%d", (d > 0 ? 100 * (u2 - u1) / d : 0) }'
}

# ---------------------------------------------------------------------------------------------
# Setup.

ensure_tools
build_switchyard
busy=$(cpu_busy_pct)
if ((busy > 20)); then
    log "WARNING: the machine is already ${busy}% busy before the benchmark: figures will be noisy"
fi
BIN=$PWD/target/release/switchyard

WORK=$(mktemp -d /tmp/switchyard-e2e.XXXXXX)
for p in $P_V1 $P_V2 $P_NGINX $P_SY $P_ADMIN; do
    port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
done

write_upstream_conf 4096
start_nginx upstream
for p in $P_V1 $P_V2; do
    wait_http "http://127.0.0.1:$p/" 10 "$LAST_PID" || die "nginx upstream did not answer on :$p ($(tail -3 "$WORK/upstream-error.log"))"
done

write_proxy_conf
start_nginx proxy
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_NGINX/" 10 "$LAST_PID" || die "nginx proxy did not answer on :$P_NGINX ($(tail -3 "$WORK/proxy-error.log"))"

RUST_LOG=${RUST_LOG:-warn} "$BIN" serve \
    --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" \
    --weight v1=90 --weight v2=10 --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral \
    >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
PIDS+=("$SY_PID")
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 15 "$SY_PID" ||
    die "switchyard not ready: $(tail -5 "$WORK/switchyard.log")"
if [[ -n $BASELINE_BIN ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    port_free "$P_BASE" && port_free "$P_BASE_ADMIN" || die "ports $P_BASE/$P_BASE_ADMIN are in use"
    RUST_LOG=${RUST_LOG:-warn} "$BASELINE_BIN" serve \
        --listen "127.0.0.1:$P_BASE" --admin-listen "127.0.0.1:$P_BASE_ADMIN" \
        --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" \
        --weight v1=90 --weight v2=10 --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral \
        >"$WORK/baseline.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    wait_http "http://127.0.0.1:$P_BASE_ADMIN/readyz" 15 "$BASE_PID" ||
        die "baseline switchyard not ready: $(tail -5 "$WORK/baseline.log")"
fi

declare -A PROC=([nginx]=$NGINX_PID [switchyard]=$SY_PID)
[[ -n $BASELINE_BIN ]] && PROC[baseline]=$BASE_PID
declare -A URL=(
    [direct]="http://127.0.0.1:$P_V1/"
    [nginx]="http://127.0.0.1:$P_NGINX/"
    [switchyard]="http://127.0.0.1:$P_SY/"
)
TARGETS=(direct nginx switchyard)
if [[ -n $BASELINE_BIN ]]; then
    URL[baseline]="http://127.0.0.1:$P_BASE/"
    TARGETS+=(baseline)
fi
for t in "${TARGETS[@]}"; do
    body=$(curl -fsS --max-time 5 "${URL[$t]}") || die "$t: ${URL[$t]} did not answer 2xx"
    [[ $body == "hello from v"[12] ]] || die "$t: unexpected body '$body'"
done

log "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), switchyard $("$BIN" --version | awk '{print $2}')"
log "$ROUNDS rounds x ${#TARGETS[@]} targets x (${WARMUP}s warm-up + ${DURATION}s), wrk -t$THREADS -c$CONNECTIONS, switchyard/nginx workers=$WORKERS"

# ---------------------------------------------------------------------------------------------
# Rounds.

declare -A RPS P50 P99 ERRS CPU
SY_ERRORS=0
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        if ((WARMUP > 0)); then
            run_wrk "$WORK/warmup-$t-$r.txt" "${URL[$t]}" "$WARMUP"
            read -r _ _ _ _ wn ws < <(parse_wrk "$WORK/warmup-$t-$r.txt") || die "cannot parse wrk output"
            if ((wn + ws > 0)); then
                log "warm-up $t round $r: non-2xx=$wn socket errors=$ws"
                if [[ $t == switchyard ]]; then SY_ERRORS=$((SY_ERRORS + wn + ws)); fi
            fi
        fi
        out="$WORK/wrk-$t-$r.txt"
        pid=${PROC[$t]:-}
        t0=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
        run_wrk "$out" "${URL[$t]}" "$DURATION"
        t1=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
        read -r rps p50 p99 reqs n2 se < <(parse_wrk "$out") || { cat "$out" >&2; die "cannot parse wrk output"; }
        RPS[$t,$r]=$rps; P50[$t,$r]=$p50; P99[$t,$r]=$p99; ERRS[$t,$r]="$n2/$se"
        # The proxy's CPU (user + system) per request it served: steadier than req/s on shared cores.
        CPU[$t,$r]=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / hz / n : 0) }')
        if ((n2 + se > 0)); then
            log "$t round $r: non-2xx=$n2, $(grep 'Socket errors' "$out" | sed 's/^ *//' || echo 'socket errors: 0')"
            if [[ $t == switchyard ]]; then SY_ERRORS=$((SY_ERRORS + n2 + se)); fi
        fi
        printf 'round %d  %-10s  %10.0f req/s  p50 %8.3f ms  p99 %8.3f ms  %9d requests  cpu %6s us/req  non-2xx/socket errors %s\n' \
            "$r" "$t" "$rps" "$p50" "$p99" "$reqs" "$([[ -n $pid ]] && echo "${CPU[$t,$r]}" || echo -)" "${ERRS[$t,$r]}"
        kill -0 "$SY_PID" 2>/dev/null || die "switchyard exited during the run: $(tail -5 "$WORK/switchyard.log")"
    done
done

# ---------------------------------------------------------------------------------------------
# Split, from switchyard's own metrics.

metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics") || die "cannot read switchyard /metrics"
read -r v1 v2 bad < <(awk '
    /^switchyard_requests_total\{/ {
        dep = $0; sub(/.*deployment="/, "", dep); sub(/".*/, "", dep)
        code = $0; sub(/.*code="/, "", code); sub(/".*/, "", code)
        n = $NF + 0
        if (dep == "v1") v1 += n; else if (dep == "v2") v2 += n
        if (code !~ /^2/) bad += n
    }
    END { printf "%d %d %d\n", v1, v2, bad }' <<<"$metrics")
upstream_errors=$(awk '/^switchyard_upstream_errors_total\{/ { s += $NF } END { printf "%d\n", s }' <<<"$metrics")

# ---------------------------------------------------------------------------------------------
# Report.

echo
echo "== e2e summary: median of $ROUNDS rounds, ${DURATION}s each, wrk -t$THREADS -c$CONNECTIONS =="
((busy <= 20)) || echo "(the machine was ${busy}% busy before the run: figures are noisy)"
printf '%-12s %12s %10s %10s %12s   %s\n' target "req/s" "p50 ms" "p99 ms" "cpu us/req" "per round req/s | p99 ms | cpu us/req"
declare -A MED_RPS MED_P99 MED_CPU
for t in "${TARGETS[@]}"; do
    rs=() ps=() p5=() cs=()
    for ((r = 1; r <= ROUNDS; r++)); do
        rs+=("${RPS[$t,$r]}"); ps+=("${P99[$t,$r]}"); p5+=("${P50[$t,$r]}"); cs+=("${CPU[$t,$r]}")
    done
    MED_RPS[$t]=$(median "${rs[@]}")
    MED_P99[$t]=$(median "${ps[@]}")
    MED_CPU[$t]=$(median "${cs[@]}")
    cpu_col=$([[ -n ${PROC[$t]:-} ]] && printf '%.2f' "${MED_CPU[$t]}" || echo -)
    printf '%-12s %12.0f %10.3f %10.3f %12s   %s | %s | %s\n' "$t" "${MED_RPS[$t]}" "$(median "${p5[@]}")" "${MED_P99[$t]}" \
        "$cpu_col" "$(printf '%.0f ' "${rs[@]}")" "$(printf '%.2f ' "${ps[@]}")" "$(printf '%s ' "${cs[@]}")"
done
rps_ratio=$(awk -v a="${MED_RPS[switchyard]}" -v b="${MED_RPS[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
p99_ratio=$(awk -v a="${MED_P99[switchyard]}" -v b="${MED_P99[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 999) }')
echo
printf 'switchyard/nginx req/s ratio: %s  (want >= %s)\n' "$rps_ratio" "$MIN_RPS_RATIO"
printf 'switchyard/nginx p99 ratio:   %s  (want <= %s)\n' "$p99_ratio" "$MAX_P99_RATIO"
printf 'switchyard/nginx cpu per request ratio: %s\n' \
    "$(awk -v a="${MED_CPU[switchyard]}" -v b="${MED_CPU[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
if [[ -n $BASELINE_BIN ]]; then
    printf 'switchyard/baseline cpu per request ratio: %s\n' \
        "$(awk -v a="${MED_CPU[switchyard]}" -v b="${MED_CPU[baseline]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
    printf 'switchyard/baseline req/s ratio: %s   p99 ratio: %s   (baseline: %s)\n' \
        "$(awk -v a="${MED_RPS[switchyard]}" -v b="${MED_RPS[baseline]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')" \
        "$(awk -v a="${MED_P99[switchyard]}" -v b="${MED_P99[baseline]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 999) }')" \
        "$BASELINE_BIN"
fi
total=$((v1 + v2))
if ((total > 0)); then
    share=$(awk -v a="$v1" -v t="$total" 'BEGIN { printf "%.2f", 100 * a / t }')
    printf 'switchyard split (from /metrics): v1 %d (%s%%), v2 %d (%s%%), want 90/10\n' \
        "$v1" "$share" "$v2" "$(awk -v s="$share" 'BEGIN { printf "%.2f", 100 - s }')"
    split_ok=$(awk -v s="$share" 'BEGIN { print (s >= 88 && s <= 92) ? 1 : 0 }')
else
    echo "switchyard split: no switchyard_requests_total series for v1/v2 in /metrics"
    split_ok=0
fi
printf 'switchyard errors: wrk non-2xx + socket errors %d, non-2xx in /metrics %d, upstream errors in /metrics %d\n' \
    "$SY_ERRORS" "$bad" "$upstream_errors"

pass=$(awk -v r="$rps_ratio" -v p="$p99_ratio" -v mr="$MIN_RPS_RATIO" -v mp="$MAX_P99_RATIO" \
    'BEGIN { print (r >= mr && p <= mp) ? 1 : 0 }')
echo
if ((pass)); then
    echo "PASS: req/s ratio $rps_ratio >= $MIN_RPS_RATIO and p99 ratio $p99_ratio <= $MAX_P99_RATIO"
else
    echo "FAIL: req/s ratio $rps_ratio (want >= $MIN_RPS_RATIO), p99 ratio $p99_ratio (want <= $MAX_P99_RATIO)"
fi
((split_ok)) || echo "WARNING: the observed split is not within 88-92% for v1"

if ((SY_ERRORS > 0 || bad > 0)); then
    echo "ERROR: switchyard answered with errors (see above)"
    exit 1
fi
if ((!pass)) && [[ $STRICT == 1 ]]; then exit 1; fi
exit 0

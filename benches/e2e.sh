#!/usr/bin/env bash
# End-to-end throughput and latency: wrk against the upstream directly, against nginx as a
# weighted proxy, and against switchyard with the same 90/10 split, in interleaved rounds.
# Everything runs on 127.0.0.1 and stops by itself. See benches/README.md.
#
#   bash benches/e2e.sh                      # HTTP/1.1 at 8, 64 and 256 connections, POST, h2c, TLS
#   DURATION=3 ROUNDS=2 bash benches/e2e.sh  # a quick look
#   CONNECTIONS=64 SECTIONS=http1 bash benches/e2e.sh   # one level, HTTP/1.1 only
#   BASELINE_BIN=/path/to/older/switchyard bash benches/e2e.sh
#                                            # also run another build, same config, interleaved:
#                                            # the cost of a change, as a ratio in the same run
#   ALSO= bash benches/e2e.sh                # the wrk/h2load sections only (about 15 minutes)
#
# After the wrk and h2load sections, ALSO runs the benches that measure the rest of issue 15's
# figures and prints their summaries, so that one run shows every figure: streaming.sh (CPU
# per 1,000 server-sent events), memory.sh (per connection, idle, across rounds), the Host
# lookup and snapshot rebuild (`cargo bench --bench routing`), swaps against the request path
# (`cargo bench --bench swap_stall`) and heap allocations per request (`--bench allocations`).
set -euo pipefail

DURATION=${DURATION:-10}        # seconds per measured wrk run
WARMUP=${WARMUP:-2}             # seconds of warm-up before each measured run (0 = none)
ROUNDS=${ROUNDS:-3}             # interleaved rounds (direct, nginx, switchyard; reversed in even rounds)
CONNECTIONS=${CONNECTIONS:-"8 64 256"}  # wrk -c, one HTTP/1.1 section per value
SECTIONS=${SECTIONS:-"http1 post h2c tls hosts"}   # which comparisons to run
ALSO=${ALSO-"streaming memory routing allocations"}  # other benches run after them ("" = none)
HOST_MODELS=${HOST_MODELS:-10000}  # hosts section: models in the configuration, one Host each
IDLE_SECONDS=${IDLE_SECONDS:-15}   # hosts section: how long the idle instance's CPU is counted
H2_CLIENTS=${H2_CLIENTS:-16}    # h2load -c
H2_STREAMS=${H2_STREAMS:-16}    # h2load -m (concurrent streams per connection)
THREADS=${THREADS:-2}           # wrk -t
WORKERS=${WORKERS:-2}           # switchyard --workers and nginx proxy worker_processes
PORT_BASE=${PORT_BASE:-18100}   # ports PORT_BASE+1 .. PORT_BASE+13 on 127.0.0.1
STRICT=${STRICT:-0}             # 1 = exit 1 when the acceptance check fails
SKIP_BUILD=${SKIP_BUILD:-0}     # 1 = use the existing target/release/switchyard
KEEP_WORK=${KEEP_WORK:-0}       # 1 = keep the temp dir (configs, logs, raw wrk output)
MIN_RPS_RATIO=${MIN_RPS_RATIO:-0.85}
MAX_P99_RATIO=${MAX_P99_RATIO:-1.3}
BASELINE_BIN=${BASELINE_BIN:-}  # another switchyard binary to measure alongside (ports +6, +7)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for v in DURATION WARMUP ROUNDS THREADS WORKERS PORT_BASE H2_CLIENTS H2_STREAMS HOST_MODELS IDLE_SECONDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "e2e: $v=${!v} is not a whole number" >&2; exit 2; }
done
for a in $ALSO; do
    [[ $a == streaming || $a == memory || $a == routing || $a == allocations ]] ||
        { echo "e2e: ALSO has '$a': want streaming, memory, routing and/or allocations" >&2; exit 2; }
done
for c in $CONNECTIONS; do
    [[ $c =~ ^[0-9]+$ ]] && ((c >= THREADS)) ||
        { echo "e2e: CONNECTIONS has '$c': want whole numbers, each at least THREADS ($THREADS)" >&2; exit 2; }
done
for sec in $SECTIONS; do
    [[ $sec == http1 || $sec == post || $sec == h2c || $sec == tls || $sec == hosts ]] ||
        { echo "e2e: SECTIONS has '$sec': want http1, post, h2c, tls and/or hosts" >&2; exit 2; }
done
(( DURATION >= 1 && ROUNDS >= 1 && THREADS >= 1 && H2_CLIENTS >= 1 && H2_STREAMS >= 1 && HOST_MODELS >= 1 )) ||
    { echo "e2e: need DURATION>=1, ROUNDS>=1, THREADS>=1, H2_CLIENTS>=1, H2_STREAMS>=1, HOST_MODELS>=1" >&2; exit 2; }
has_section() { [[ " $SECTIONS " == *" $1 "* ]]; }

P_V1=$((PORT_BASE + 1))     # nginx upstream, deployment v1
P_V2=$((PORT_BASE + 2))     # nginx upstream, deployment v2
P_NGINX=$((PORT_BASE + 3))  # nginx proxy baseline
P_SY=$((PORT_BASE + 4))     # switchyard proxy
P_ADMIN=$((PORT_BASE + 5))  # switchyard admin
P_BASE=$((PORT_BASE + 6))   # baseline switchyard build (BASELINE_BIN)
P_BASE_ADMIN=$((PORT_BASE + 7))
P_NGINX_H2=$((PORT_BASE + 8))   # nginx proxy, h2c (prior knowledge) to clients
P_NGINX_TLS=$((PORT_BASE + 9))  # nginx proxy, HTTPS
P_SY_TLS=$((PORT_BASE + 10))    # switchyard terminating TLS (rustls)
P_SY_TLS_ADMIN=$((PORT_BASE + 11))
P_SY_HOSTS=$((PORT_BASE + 12))  # switchyard with HOST_MODELS models, one Host each
P_SY_HOSTS_ADMIN=$((PORT_BASE + 13))

LOG_TAG=e2e
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# Processes, and cleaning them up whatever happens.

stop_everything_on_exit


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
$(nginx_proxy_head "$WORKERS" 4096)
$(nginx_backends)
$(nginx_plain_server "$P_NGINX")
    # h2c by prior knowledge to clients, HTTP/1.1 to the upstream, as switchyard does.
    server {
        listen 127.0.0.1:$P_NGINX_H2 http2 backlog=4096;
        http2_max_concurrent_streams 256;
$(nginx_proxy_location)
    }
    # HTTPS with the certificate switchyard is given.
    server {
        listen 127.0.0.1:$P_NGINX_TLS ssl backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
$(nginx_proxy_location)
    }
}
EOF
}

# ---------------------------------------------------------------------------------------------
# wrk.

# Prints: rps p50_ms p99_ms requests non2xx socket_errors
parse_wrk() {
    awk "$AWK_MS"'
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

cpu_busy_pct() { # CPU in use by anything over 1 s, from /proc/stat
    local a b
    read -ra a </proc/stat; sleep 1; read -ra b </proc/stat
    awk -v u1="$((a[1] + a[2] + a[3] + a[6] + a[7]))" -v i1="$((a[4] + a[5]))" \
        -v u2="$((b[1] + b[2] + b[3] + b[6] + b[7]))" -v i2="$((b[4] + b[5]))" \
        'BEGIN { d = (u2 - u1) + (i2 - i1); printf "%d", (d > 0 ? 100 * (u2 - u1) / d : 0) }'
}

# ---------------------------------------------------------------------------------------------
# h2load (h2c) and the TLS certificate.

# Prints: rps mean_ms requests failed
parse_h2load() {
    awk "$AWK_MS"'
    /^finished in/ { rps = $4 }
    /^requests:/ { done = $6; failed = $10 + $12 + $14 }
    /^time for request:/ { mean = ms($6) }
    END {
        if (rps == "") exit 1
        printf "%.2f %.3f %d %d\n", rps, mean, done, failed
    }' "$1"
}

run_h2load() { # OUTFILE URL SECONDS
    local out=$1 url=$2 secs=$3
    timeout $((secs + 30)) h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -t"$THREADS" -D "$secs" "$url" \
        >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=""; cat "$out" >&2; die "h2load against $url failed"; }
    WRK_PID=""
}

ensure_extra_tools() {
    local pkgs=()
    has_section h2c && ! command -v h2load >/dev/null && pkgs+=(nghttp2-client)
    has_section tls && ! command -v openssl >/dev/null && pkgs+=(openssl)
    ((${#pkgs[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing ${pkgs[*]}; run as root or install them"
    log "installing: ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
        die "apt-get install ${pkgs[*]} failed"
}

# ---------------------------------------------------------------------------------------------
# Setup.

ensure_tools
ensure_extra_tools
build_switchyard
busy=$(cpu_busy_pct)
if ((busy > 20)); then
    log "WARNING: the machine is already ${busy}% busy before the benchmark: figures will be noisy"
fi
BIN=$PWD/target/release/switchyard

WORK=$(mktemp -d /tmp/switchyard-e2e.XXXXXX)
for p in $P_V1 $P_V2 $P_NGINX $P_SY $P_ADMIN $P_NGINX_H2 $P_NGINX_TLS $P_SY_TLS $P_SY_TLS_ADMIN $P_SY_HOSTS $P_SY_HOSTS_ADMIN; do
    port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
done
make_certificate

write_upstream_conf 4096
start_nginx upstream
for p in $P_V1 $P_V2; do
    wait_http "http://127.0.0.1:$p/" 10 "$LAST_PID" || die "nginx upstream did not answer on :$p ($(tail -3 "$WORK/upstream-error.log"))"
done

write_proxy_conf
start_nginx proxy
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_NGINX/" 10 "$LAST_PID" || die "nginx proxy did not answer on :$P_NGINX ($(tail -3 "$WORK/proxy-error.log"))"

start_switchyard() { # NAME BIN LISTEN_PORT ADMIN_PORT [EXTRA ARGS...]: sets LAST_PID
    local name=$1 bin=$2 port=$3 admin=$4
    shift 4
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" \
        --weight v1=90 --weight v2=10 --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral "$@" \
        >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "http://127.0.0.1:$admin/readyz" 15 "$LAST_PID" ||
        die "$name not ready: $(tail -5 "$WORK/$name.log")"
}

start_switchyard switchyard "$BIN" "$P_SY" "$P_ADMIN"
SY_PID=$LAST_PID
if has_section tls; then
    start_switchyard switchyard-tls "$BIN" "$P_SY_TLS" "$P_SY_TLS_ADMIN" \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
    SY_TLS_PID=$LAST_PID
fi
if has_section hosts; then
    # HOST_MODELS models, each with its own Host and one deployment on the v1 upstream: the
    # first and the last model must cost the same to reach. Probes off (one per replica).
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\nworkers = %s\n' \
            "$P_SY_HOSTS" "$P_SY_HOSTS_ADMIN" "$WORKERS"
        printf 'shutdown_grace_seconds = 1\n[upstream]\nstatic_probe_interval_seconds = 0\n'
        for ((m = 1; m <= HOST_MODELS; m++)); do
            printf '[[models]]\nid = "m%d"\nhosts = ["m%d.example"]\n[[models.deployments]]\nid = "v1"\nreplicas = ["127.0.0.1:%s"]\n[[models.environments]]\nname = "production"\ncurrent = "v1"\n' \
                "$m" "$m" "$P_V1"
        done
    } >"$WORK/hosts.toml"
    RUST_LOG=${RUST_LOG:-warn} "$BIN" serve --config "$WORK/hosts.toml" --ephemeral >"$WORK/switchyard-hosts.log" 2>&1 &
    HOSTS_PID=$!
    PIDS+=("$HOSTS_PID")
    wait_http "http://127.0.0.1:$P_SY_HOSTS_ADMIN/readyz" 60 "$HOSTS_PID" ||
        die "switchyard with $HOST_MODELS models not ready: $(tail -5 "$WORK/switchyard-hosts.log")"
fi
if [[ -n $BASELINE_BIN ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    port_free "$P_BASE" && port_free "$P_BASE_ADMIN" || die "ports $P_BASE/$P_BASE_ADMIN are in use"
    start_switchyard baseline "$BASELINE_BIN" "$P_BASE" "$P_BASE_ADMIN"
    BASE_PID=$LAST_PID
fi

# Per section: the targets, their URLs and the process whose CPU is counted.
declare -A URL PROC
URL[http1/direct]="http://127.0.0.1:$P_V1/"
URL[http1/nginx]="http://127.0.0.1:$P_NGINX/"
URL[http1/switchyard]="http://127.0.0.1:$P_SY/"
PROC[http1/nginx]=$NGINX_PID
PROC[http1/switchyard]=$SY_PID
HTTP1_TARGETS=(direct nginx switchyard)
if [[ -n $BASELINE_BIN ]]; then
    URL[http1/baseline]="http://127.0.0.1:$P_BASE/"
    PROC[http1/baseline]=$BASE_PID
    HTTP1_TARGETS+=(baseline)
fi
URL[h2c/nginx]="http://127.0.0.1:$P_NGINX_H2/"
URL[h2c/switchyard]="http://127.0.0.1:$P_SY/"
PROC[h2c/nginx]=$NGINX_PID
PROC[h2c/switchyard]=$SY_PID
URL[tls/nginx]="https://127.0.0.1:$P_NGINX_TLS/"
URL[tls/switchyard]="https://127.0.0.1:$P_SY_TLS/"
PROC[tls/nginx]=$NGINX_PID
PROC[tls/switchyard]=${SY_TLS_PID:-}
declare -A HOST_OF=([first]=m1.example [last]="m$HOST_MODELS.example")
URL[hosts/first]="http://127.0.0.1:$P_SY_HOSTS/"
URL[hosts/last]="http://127.0.0.1:$P_SY_HOSTS/"
PROC[hosts/first]=${HOSTS_PID:-}
PROC[hosts/last]=${HOSTS_PID:-}

for t in "${HTTP1_TARGETS[@]}"; do
    body=$(curl -fsS --max-time 5 "${URL[http1/$t]}") || die "$t: ${URL[http1/$t]} did not answer 2xx"
    [[ $body == "hello from v"[12] ]] || die "$t: unexpected body '$body'"
    if has_section post; then
        body=$(curl -fsS --max-time 5 -H 'Content-Type: application/json' -d '{"prompt":"hi"}' "${URL[http1/$t]}v1/completions") ||
            die "$t: POST to ${URL[http1/$t]}v1/completions did not answer 2xx"
        [[ $body == '{"text":"hello from v'[12]'"}' ]] || die "$t (POST): unexpected body '$body'"
    fi
done
if has_section h2c; then
    for t in nginx switchyard; do
        body=$(curl -fsS --max-time 5 --http2-prior-knowledge "${URL[h2c/$t]}") || die "$t: h2c to ${URL[h2c/$t]} failed"
        [[ $body == "hello from v"[12] ]] || die "$t (h2c): unexpected body '$body'"
    done
fi
if has_section hosts; then
    for t in first last; do
        body=$(curl -fsS --max-time 5 -H "Host: ${HOST_OF[$t]}" "${URL[hosts/$t]}") ||
            die "the $t of $HOST_MODELS models (Host ${HOST_OF[$t]}) did not answer 2xx"
        [[ $body == "hello from v1" ]] || die "Host ${HOST_OF[$t]}: unexpected body '$body'"
    done
fi
if has_section tls; then
    for t in nginx switchyard; do
        body=$(curl -fsS --max-time 5 --cacert "$WORK/cert.pem" "${URL[tls/$t]}") || die "$t: HTTPS to ${URL[tls/$t]} failed"
        [[ $body == "hello from v"[12] ]] || die "$t (TLS): unexpected body '$body'"
    done
fi

log "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), switchyard $("$BIN" --version | awk '{print $2}')"
log "sections: $SECTIONS; HTTP/1.1 at -c ${CONNECTIONS// /, }; $ROUNDS rounds of (${WARMUP}s warm-up + ${DURATION}s) per target; workers=$WORKERS"

# ---------------------------------------------------------------------------------------------
# Rounds. Each measured run records req/s, p50, p99 (mean for h2load, which has no
# percentiles), errors and the proxy's CPU per request; keys are SECTION/TARGET/ROUND, where
# SECTION is c8, c64, ... for HTTP/1.1, or h2c, tls.

declare -A RPS P50 P99 CPU
SY_ERRORS=0

measure() { # SECTION TARGET ROUND KIND URL PID
    local sec=$1 t=$2 r=$3 kind=$4 url=$5 pid=$6 out t0 t1 rps p50 p99 reqs n2 se s0 s1 idle
    out="$WORK/$kind-$sec-$t-$r.txt"
    if ((WARMUP > 0)); then
        case $kind in
            h2) run_h2load "$out.warmup" "$url" "$WARMUP" ;;
            *) run_wrk "$out.warmup" "$url" "$WARMUP" ;;
        esac
    fi
    t0=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
    read -ra s0 </proc/stat
    case $kind in
        h2) run_h2load "$out" "$url" "$DURATION" ;;
        *) run_wrk "$out" "$url" "$DURATION" ;;
    esac
    t1=$([[ -n $pid ]] && cpu_ticks "$pid" || echo 0)
    read -ra s1 </proc/stat
    if [[ $kind == h2 ]]; then
        read -r rps p50 reqs n2 < <(parse_h2load "$out") || { cat "$out" >&2; die "cannot parse h2load output"; }
        p99=$p50; se=0
    else
        read -r rps p50 p99 reqs n2 se < <(parse_wrk "$out") || { cat "$out" >&2; die "cannot parse wrk output"; }
    fi
    RPS[$sec/$t/$r]=$rps; P50[$sec/$t/$r]=$p50; P99[$sec/$t/$r]=$p99
    # The proxy's CPU (user + system) per request it served: steadier than req/s on shared cores.
    CPU[$sec/$t/$r]=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / hz / n : 0) }')
    # The machine's idle share over the run (idle + iowait of all CPUs): at 8 connections the
    # two cores are not saturated, and a target that leaves more of them idle waits more.
    idle=$(awk -v a="${s0[*]:1:8}" -v b="${s1[*]:1:8}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) { d = y[i] - x[i]; all += d; if (i == 4 || i == 5) id += d }
        printf "%.1f", (all > 0 ? 100 * id / all : 0) }')
    if ((n2 + se > 0)); then
        log "$sec $t round $r: non-2xx or failed=$n2, socket errors=$se"
        if [[ $t == switchyard ]]; then SY_ERRORS=$((SY_ERRORS + n2 + se)); fi
    fi
    printf 'round %d  %-5s %-10s  %10.0f req/s  %s %8.3f ms  %s %8.3f ms  %9d requests  cpu %6s us/req  idle %5s%%\n' \
        "$r" "$sec" "$t" "$rps" "$([[ $kind == h2 ]] && echo mean || echo p50)" "$p50" \
        "$([[ $kind == h2 ]] && echo mean || echo p99)" "$p99" "$reqs" "$([[ -n $pid ]] && echo "${CPU[$sec/$t/$r]}" || echo -)" "$idle"
    kill -0 "$SY_PID" 2>/dev/null || die "switchyard exited during the run: $(tail -5 "$WORK/switchyard.log")"
}

SECTION_LIST=()
declare -A SECTION_TARGETS SECTION_TITLE
if has_section http1; then
    for c in $CONNECTIONS; do
        SECTION_LIST+=("c$c")
        SECTION_TARGETS[c$c]="${HTTP1_TARGETS[*]}"
        SECTION_TITLE[c$c]="HTTP/1.1, wrk -t$THREADS -c$c"
    done
fi
if has_section post; then
    # What inference clients send: a JSON body on every request (wrk sends head and body in
    # one write), answered with a small JSON body.
    write_post_script "$WORK/post.lua"
    SECTION_LIST+=(post)
    SECTION_TARGETS[post]="${HTTP1_TARGETS[*]}"
    SECTION_TITLE[post]="HTTP/1.1 POST with a 110-byte JSON body, wrk -t$THREADS -c64"
fi
if has_section h2c; then
    SECTION_LIST+=(h2c)
    SECTION_TARGETS[h2c]="nginx switchyard"
    SECTION_TITLE[h2c]="h2c, h2load -c$H2_CLIENTS -m$H2_STREAMS (p50/p99 columns: mean)"
fi
if has_section tls; then
    SECTION_LIST+=(tls)
    SECTION_TARGETS[tls]="nginx switchyard"
    SECTION_TITLE[tls]="HTTPS, wrk -t$THREADS -c64 (rustls vs OpenSSL, same P-256 certificate)"
fi
if has_section hosts; then
    SECTION_LIST+=(hosts)
    SECTION_TARGETS[hosts]="first last"
    SECTION_TITLE[hosts]="Host routing among $HOST_MODELS models, wrk -t$THREADS -c64 to the first and the last model's Host"
fi

CONNECTIONS_NOW=64
WRK_HOST=""
WRK_SCRIPT=""
run_wrk() { # OUTFILE URL SECONDS (wrk -c from CONNECTIONS_NOW, a Host header from WRK_HOST, -s WRK_SCRIPT)
    local out=$1 url=$2 secs=$3
    timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNECTIONS_NOW" -d"${secs}s" --timeout 5s --latency \
        ${WRK_HOST:+-H "Host: $WRK_HOST"} ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=""; cat "$out" >&2; die "wrk against $url failed"; }
    WRK_PID=""
}

for ((r = 1; r <= ROUNDS; r++)); do
    for sec in "${SECTION_LIST[@]}"; do
        # Even rounds run the targets in reverse order, so that no target always runs right
        # after another (whatever one run leaves behind, the next pays for).
        order=(${SECTION_TARGETS[$sec]})
        if ((r % 2 == 0)); then
            for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
                tmp=${order[i]}; order[i]=${order[j]}; order[j]=$tmp
            done
        fi
        for t in "${order[@]}"; do
            case $sec in
                c*) CONNECTIONS_NOW=${sec#c}; measure "$sec" "$t" "$r" wrk "${URL[http1/$t]}" "${PROC[http1/$t]:-}" ;;
                post)
                    CONNECTIONS_NOW=64 WRK_SCRIPT=$WORK/post.lua
                    measure post "$t" "$r" wrk "${URL[http1/$t]}v1/completions" "${PROC[http1/$t]:-}"
                    WRK_SCRIPT=""
                    ;;
                h2c) measure h2c "$t" "$r" h2 "${URL[h2c/$t]}" "${PROC[h2c/$t]}" ;;
                tls) CONNECTIONS_NOW=64; measure tls "$t" "$r" wrk "${URL[tls/$t]}" "${PROC[tls/$t]}" ;;
                hosts)
                    CONNECTIONS_NOW=64 WRK_HOST=${HOST_OF[$t]}
                    measure hosts "$t" "$r" wrk "${URL[hosts/$t]}" "${PROC[hosts/$t]}"
                    WRK_HOST=""
                    ;;
            esac
        done
    done
done

# What the 10,000-model instance costs while nothing is sent to it: its background work (the
# dashboard's sampler, probes, the controller) must not grow with the configuration either.
if has_section hosts; then
    sleep 1
    t0=$(cpu_ticks "$HOSTS_PID")
    sleep "$IDLE_SECONDS"
    t1=$(cpu_ticks "$HOSTS_PID")
    HOSTS_IDLE_PCT=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v s="$IDLE_SECONDS" 'BEGIN { printf "%.1f", 100 * d / hz / s }')
    HOSTS_RSS_MIB=$(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$HOSTS_PID/status")
    # And what a Prometheus scrape of it costs: every pool's series, written at scrape time.
    t0=$(cpu_ticks "$HOSTS_PID")
    for ((i = 0; i < 10; i++)); do
        SCRAPE_BYTES=$(curl -fsS --max-time 30 -o /dev/null -w '%{size_download}' \
            "http://127.0.0.1:$P_SY_HOSTS_ADMIN/metrics") || die "cannot scrape the $HOST_MODELS-model instance"
    done
    t1=$(cpu_ticks "$HOSTS_PID")
    SCRAPE_MS=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", 1000 * d / hz / 10 }')
fi

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

ratio() { awk -v a="$1" -v b="$2" -v d="${3:-0}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : d) }'; }

echo
echo "== e2e summary: medians of $ROUNDS interleaved rounds, ${DURATION}s each, $WORKERS workers per proxy =="
((busy <= 20)) || echo "(the machine was ${busy}% busy before the run: figures are noisy)"
declare -A MED_RPS MED_P99 MED_CPU
pass=1
for sec in "${SECTION_LIST[@]}"; do
    echo
    echo "-- ${SECTION_TITLE[$sec]}"
    printf '%-12s %12s %10s %10s %12s   %s\n' target "req/s" "p50 ms" "p99 ms" "cpu us/req" "per round req/s | p99 ms | cpu us/req"
    for t in ${SECTION_TARGETS[$sec]}; do
        rs=() ps=() p5=() cs=()
        for ((r = 1; r <= ROUNDS; r++)); do
            rs+=("${RPS[$sec/$t/$r]}"); ps+=("${P99[$sec/$t/$r]}"); p5+=("${P50[$sec/$t/$r]}"); cs+=("${CPU[$sec/$t/$r]}")
        done
        MED_RPS[$sec/$t]=$(median "${rs[@]}")
        MED_P99[$sec/$t]=$(median "${ps[@]}")
        MED_CPU[$sec/$t]=$(median "${cs[@]}")
        cpu_col=$([[ $t != direct ]] && printf '%.2f' "${MED_CPU[$sec/$t]}" || echo -)
        printf '%-12s %12.0f %10.3f %10.3f %12s   %s | %s | %s\n' "$t" "${MED_RPS[$sec/$t]}" "$(median "${p5[@]}")" \
            "${MED_P99[$sec/$t]}" "$cpu_col" "$(printf '%.0f ' "${rs[@]}")" "$(printf '%.2f ' "${ps[@]}")" "$(printf '%s ' "${cs[@]}")"
    done
    if [[ $sec == hosts ]]; then
        printf 'last/first model: req/s %s, p99 %s, cpu per request %s (want req/s within noise of 1.0)\n' \
            "$(ratio "${MED_RPS[hosts/last]}" "${MED_RPS[hosts/first]}")" \
            "$(ratio "${MED_P99[hosts/last]}" "${MED_P99[hosts/first]}" 999)" \
            "$(ratio "${MED_CPU[hosts/last]}" "${MED_CPU[hosts/first]}")"
        printf 'idle, with %d models: %s%% of one core over %ds, RSS %s MiB\n' \
            "$HOST_MODELS" "$HOSTS_IDLE_PCT" "$IDLE_SECONDS" "$HOSTS_RSS_MIB"
        printf 'a /metrics scrape of it: %s bytes, %s ms of CPU (mean of 10)\n' "$SCRAPE_BYTES" "$SCRAPE_MS"
        continue
    fi
    rr=$(ratio "${MED_RPS[$sec/switchyard]}" "${MED_RPS[$sec/nginx]}")
    pr=$(ratio "${MED_P99[$sec/switchyard]}" "${MED_P99[$sec/nginx]}" 999)
    cr=$(ratio "${MED_CPU[$sec/switchyard]}" "${MED_CPU[$sec/nginx]}")
    printf 'switchyard/nginx: req/s %s (want >= %s), %s %s (want <= %s), cpu per request %s\n' \
        "$rr" "$MIN_RPS_RATIO" "$([[ $sec == h2c ]] && echo "mean latency" || echo p99)" "$pr" "$MAX_P99_RATIO" "$cr"
    ok=$(awk -v r="$rr" -v p="$pr" -v mr="$MIN_RPS_RATIO" -v mp="$MAX_P99_RATIO" 'BEGIN { print (r >= mr && p <= mp) ? 1 : 0 }')
    ((ok)) || pass=0
    if [[ -n $BASELINE_BIN && ($sec == c* || $sec == post) ]]; then
        printf 'switchyard/baseline: req/s %s, p99 %s, cpu per request %s   (baseline: %s)\n' \
            "$(ratio "${MED_RPS[$sec/switchyard]}" "${MED_RPS[$sec/baseline]}")" \
            "$(ratio "${MED_P99[$sec/switchyard]}" "${MED_P99[$sec/baseline]}" 999)" \
            "$(ratio "${MED_CPU[$sec/switchyard]}" "${MED_CPU[$sec/baseline]}")" "$BASELINE_BIN"
    fi
done

echo
total=$((v1 + v2))
split_ok=0
if ! has_section http1 && ! has_section post && ! has_section h2c; then
    total=0   # only the hosts and TLS instances served traffic: no split to show
elif ((total > 0)); then
    share=$(awk -v a="$v1" -v t="$total" 'BEGIN { printf "%.2f", 100 * a / t }')
    printf 'switchyard split (from /metrics, plain listener): v1 %d (%s%%), v2 %d (%s%%), want 90/10\n' \
        "$v1" "$share" "$v2" "$(awk -v s="$share" 'BEGIN { printf "%.2f", 100 - s }')"
    split_ok=$(awk -v s="$share" 'BEGIN { print (s >= 88 && s <= 92) ? 1 : 0 }')
elif has_section http1 || has_section post || has_section h2c; then
    echo "switchyard split: no switchyard_requests_total series for v1/v2 in /metrics"
fi
printf 'switchyard errors: non-2xx/failed + socket errors %d, non-2xx in /metrics %d, upstream errors in /metrics %d\n' \
    "$SY_ERRORS" "$bad" "$upstream_errors"

echo
if ((pass)); then
    echo "PASS: every section has req/s ratio >= $MIN_RPS_RATIO and latency ratio <= $MAX_P99_RATIO"
else
    echo "FAIL: some section has req/s ratio < $MIN_RPS_RATIO or latency ratio > $MAX_P99_RATIO (see above)"
fi
if ((total > 0 && !split_ok)); then echo "WARNING: the observed split is not within 88-92% for v1"; fi

# ---------------------------------------------------------------------------------------------
# The rest of the figures, from the benches that measure them (ALSO). They run after the timed
# sections above, whose processes are idle by now; a cargo bench build starts only here.

also() { # TITLE LOG COMMAND...: prints the title and runs one bench, its output to $WORK/LOG (the caller prints the summary)
    local title=$1 out=$WORK/$2
    shift 2
    log "$title"
    echo
    echo "-- $title"
    # Each bench on its own defaults: this script's settings (DURATION, ROUNDS, ...) mean
    # other things there.
    if ! env -u DURATION -u WARMUP -u ROUNDS -u CONNECTIONS -u THREADS -u WORKERS -u PORT_BASE \
        -u STRICT -u KEEP_WORK "$@" >"$out" 2>"$out.err"; then
        tail -5 "$out.err" >&2
        die "$title failed (output kept in $out and $out.err with KEEP_WORK=1)"
    fi
}

criterion_medians() { # FILE: "name: median" for each criterion result in it
    awk '/^[^ ].*/ && !/^(Benchmarking|Found|Gnuplot|Warning|  )/ { name = $0 }
         /time:/ { gsub(/[\[\]]/, ""); for (i = 1; i <= NF; i++) if ($i == "time:") { n = name; sub(/ +time:.*/, "", n); printf "  %-62s %s %s\n", n, $(i + 3), $(i + 4) } }' "$1"
}

if [[ -n $ALSO ]]; then
    echo
    echo "== the rest of the figures: $ALSO =="
fi
for a in $ALSO; do
    case $a in
    streaming)
        also "streaming (benches/streaming.sh)" streaming.out env SKIP_BUILD=1 bash benches/streaming.sh
        sed -n '/^== /,$p' "$WORK/streaming.out"
        ;;
    memory)
        also "memory (benches/memory.sh)" memory.out env SKIP_BUILD=1 bash benches/memory.sh
        sed -n '/^== /,$p' "$WORK/memory.out"
        ;;
    routing)
        also "Host lookup and snapshot rebuild (cargo bench --bench routing, quick settings)" routing.out \
            cargo bench --bench routing -- "by Host|snapshot" --measurement-time 3 --warm-up-time 1
        echo "median time of each:"
        criterion_medians "$WORK/routing.out"
        also "snapshot swaps against the request path (cargo bench --bench swap_stall)" swap.out \
            cargo bench --bench swap_stall
        sed -n '/^== /,$p' "$WORK/swap.out"
        ;;
    allocations)
        also "heap allocations per request (cargo bench --bench allocations)" alloc.out \
            cargo bench --bench allocations
        sed -n '/^allocations per/,$p' "$WORK/alloc.out"
        rm -f dhat-heap.json
        ;;
    esac
done

if ((SY_ERRORS > 0 || bad > 0)); then
    echo "ERROR: switchyard answered with errors (see above)"
    exit 1
fi
if ((!pass)) && [[ $STRICT == 1 ]]; then exit 1; fi
exit 0

#!/usr/bin/env bash
# Shared by the shell benchmarks (sourced, not run): logging, installing the tools they need
# from Debian's packages, building switchyard, stopping everything on exit, CPU time and
# medians, the nginx pieces. Set LOG_TAG first.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_TAG" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ---------------------------------------------------------------------------------------------
# Tools.

ensure_tools() {
    local missing=() pkgs=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v pgrep >/dev/null || missing+=(procps)
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root or install them"
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    for m in "${missing[@]}"; do
        if [[ $m == nginx ]]; then
            # nginx-light (bookworm) is the small build; newer releases only ship nginx.
            if apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
                pkgs+=(nginx-light)
            else
                pkgs+=(nginx)
            fi
        else
            pkgs+=("$m")
        fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
        die "apt-get install ${pkgs[*]} failed"
    command -v nginx >/dev/null && command -v wrk >/dev/null || die "nginx or wrk still missing"
}

ensure_command() { # COMMAND PACKAGE: installs PACKAGE from Debian when COMMAND is missing
    command -v "$1" >/dev/null && return 0
    [[ $EUID -eq 0 ]] || die "$1 is missing; run as root or install $2"
    log "installing: $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || die "apt-get install $2 failed"
}

ensure_valgrind() { ensure_command valgrind valgrind; }

# The upstream nginx of the callgrind scripts, once the ports are checked free: writes the
# config (write_upstream_conf), starts it and waits for it.
#   start_upstream WORKER_CONNECTIONS PORT...
start_upstream() {
    local conns=$1 p
    shift
    for p in "$@"; do
        port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
    done
    write_upstream_conf "$conns"
    nginx -p "$WORK" -e "$WORK/upstream-error.log" -c "$WORK/upstream.conf" >>"$WORK/upstream-error.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$P_V1/" 10 "$!" || die "nginx upstream did not answer"
}

build_switchyard() {
    if [[ $SKIP_BUILD == 1 ]]; then
        [[ -x target/release/switchyard ]] || die "SKIP_BUILD=1 but target/release/switchyard is missing"
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found (install Rust, or SKIP_BUILD=1 with a built binary)"
    log "cargo build --release (waits if another build holds the lock)"
    cargo build --release --quiet || die "cargo build --release failed"
}

# ---------------------------------------------------------------------------------------------
# Processes, ports and nginx.

stop_all() { # PID...: TERM, wait up to 5 s, KILL; then remove $WORK unless KEEP_WORK=1
    local all=("$@") p
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0
            for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${all[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}

# Processes a script started: each is stopped on exit with its children (nginx workers). A load
# generator runs in the background as WRK_PID (so that a signal interrupts `wait` at once), a
# sampler as SAMPLER_PID. A script may define `before_cleanup`.
PIDS=()
WRK_PID=""
SAMPLER_PID=""
WORK=""
cleanup() {
    local rc=$? all=() p c
    trap - EXIT INT TERM
    if declare -F before_cleanup >/dev/null; then before_cleanup || true; fi
    for p in "${PIDS[@]}" ${SAMPLER_PID:+"$SAMPLER_PID"} ${WRK_PID:+"$WRK_PID"}; do
        all+=("$p")
        for c in $(pgrep -P "$p" 2>/dev/null || true); do all+=("$c"); done
    done
    stop_all "${all[@]}"
    exit "$rc"
}
stop_everything_on_exit() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------------------------
# Figures.

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

median() { # NUMBER...: their median, to six significant digits
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR % 2) printf "%.6g\n", a[(NR + 1) / 2]; else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# The awk function that reads a wrk or h2load duration ("512.00us", "1.2ms", "3s") as ms.
AWK_MS='
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return n
    }'

# ---------------------------------------------------------------------------------------------
# nginx as a proxy: the two deployments 90/10, HTTP/1.1 keep-alive to them.

nginx_proxy_head() { # WORKERS CONNECTIONS [MAIN_LINE...]: a proxy config up to inside `http {`
    local workers=$1 conns=$2 line
    shift 2
    nginx_user_line
    echo "daemon off;"
    for line in "$@"; do echo "$line"; done
    cat <<EOF
worker_processes $workers;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    $(nginx_temp_paths proxy)
EOF
}

nginx_backends() { # the upstream block
    cat <<EOF
    upstream backends {
        server 127.0.0.1:$P_V1 weight=9;
        server 127.0.0.1:$P_V2 weight=1;
        keepalive 256;
        keepalive_requests 100000;
    }
EOF
}

nginx_plain_server() { # PORT: the plain HTTP/1.1 proxy server block
    printf '    server {\n        listen 127.0.0.1:%s backlog=4096;\n%s\n    }\n' "$1" "$(nginx_proxy_location)"
}

nginx_proxy_location() { # the location every proxy server block uses
    cat <<EOF
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
EOF
}

port_free() { [[ -z $(ss -Hltn "( sport = :$1 )" 2>/dev/null) ]]; }

wait_http() { # URL SECONDS [PID]: until URL answers 2xx
    local url=$1 secs=$2 pid=${3:-}
    for _ in $(seq $((secs * 10))); do
        # -k: a readiness probe of our own self-signed test certificate, nothing more.
        curl -fsSk --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

nginx_user_line() {
    [[ $EUID -eq 0 ]] || return 0
    if getent group nogroup >/dev/null; then echo "user nobody nogroup;"
    elif getent group nobody >/dev/null; then echo "user nobody nobody;"
    else echo "user root root;"; fi
}

nginx_temp_paths() { # keeps nginx out of /var/lib/nginx
    local name=$1 v
    v=$(nginx -V 2>&1)
    echo "client_body_temp_path $WORK/tmp/$name-body; proxy_temp_path $WORK/tmp/$name-proxy;"
    [[ $v == *--without-http_fastcgi_module* ]] || echo "fastcgi_temp_path $WORK/tmp/$name-fastcgi;"
    [[ $v == *--without-http_uwsgi_module* ]] || echo "uwsgi_temp_path $WORK/tmp/$name-uwsgi;"
    [[ $v == *--without-http_scgi_module* ]] || echo "scgi_temp_path $WORK/tmp/$name-scgi;"
}

# The upstream nginx: two deployments (v1, v2) on $P_V1 and $P_V2, each serving a one-line
# text file from $WORK/www. Writes $WORK/upstream.conf.
#   write_upstream_conf WORKER_CONNECTIONS [RLIMIT_NOFILE]
write_upstream_conf() {
    local conns=$1 nofile=${2:-}
    mkdir -p "$WORK/www/v1" "$WORK/www/v2" "$WORK/tmp"
    printf 'hello from v1\n' >"$WORK/www/v1/index.txt"
    printf 'hello from v2\n' >"$WORK/www/v2/index.txt"
    chmod -R a+rX "$WORK"
    cat >"$WORK/upstream.conf" <<EOF
$(nginx_user_line)
daemon off;
worker_processes 1;
${nofile:+worker_rlimit_nofile $nofile;}
pid $WORK/upstream.pid;
error_log $WORK/upstream-error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    default_type text/plain;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    open_file_cache max=16 inactive=60s;
    $(nginx_temp_paths upstream)
    server {
        listen 127.0.0.1:$P_V1 backlog=4096;
        root $WORK/www/v1;
        location / { try_files /index.txt =404; }
        # An inference-style POST (e2e's post section): a small JSON answer, head and body
        # in one write, whatever the request body.
        location = /v1/completions { default_type application/json; return 200 '{"text":"hello from v1"}'; }
    }
    server {
        listen 127.0.0.1:$P_V2 backlog=4096;
        root $WORK/www/v2;
        location / { try_files /index.txt =404; }
        # An inference-style POST (e2e's post section): a small JSON answer, head and body
        # in one write, whatever the request body.
        location = /v1/completions { default_type application/json; return 200 '{"text":"hello from v2"}'; }
    }
}
EOF
}

write_post_script() { # FILE: the wrk script for a JSON POST, as inference clients send (110 bytes)
    cat >"$1" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"m","prompt":"Write a haiku about proxies and rolling deployments.","max_tokens":64,"stream":false}'
wrk.headers["Content-Type"] = "application/json"
EOF
}

make_certificate() { # a P-256 key and a self-signed certificate for 127.0.0.1, used by both proxies
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
        -addext subjectAltName=IP:127.0.0.1,DNS:localhost >/dev/null 2>&1 ||
        die "openssl could not make a test certificate"
    chmod a+r "$WORK/key.pem" "$WORK/cert.pem"
}

# For SCHEME (http or https): TLS_ARGS, switchyard's flags, and LISTEN_SSL, what follows an
# nginx proxy's `listen ADDR backlog=N` (up to the final `;`); over https, one certificate
# for both in $WORK.
setup_scheme() {
    TLS_ARGS=()
    LISTEN_SSL=""
    [[ $SCHEME == https ]] || return 0
    ensure_command openssl openssl
    make_certificate
    TLS_ARGS=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    LISTEN_SSL=" ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3"
}

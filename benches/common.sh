#!/usr/bin/env bash
# Shared by benches/e2e.sh and benches/memory.sh (sourced, not run): logging, installing the
# tools the benchmarks need from Debian's packages, building switchyard. Set LOG_TAG first.

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

port_free() { [[ -z $(ss -Hltn "( sport = :$1 )" 2>/dev/null) ]]; }

wait_http() { # URL SECONDS [PID]: until URL answers 2xx
    local url=$1 secs=$2 pid=${3:-}
    for _ in $(seq $((secs * 10))); do
        curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
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
    }
    server {
        listen 127.0.0.1:$P_V2 backlog=4096;
        root $WORK/www/v2;
        location / { try_files /index.txt =404; }
    }
}
EOF
}

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


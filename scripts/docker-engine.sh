#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the compose deployer and its tests.
#
#   scripts/docker-engine.sh          install the engine if missing, start dockerd if not answering,
#                                     wait until `docker info` works (idempotent)
#   scripts/docker-engine.sh stop     stop the dockerd this script started
#   scripts/docker-engine.sh status   say whether an engine answers
#
# Debian/Ubuntu packages: docker.io (engine), docker-compose (Compose v1), iptables.
# Needs root (or sudo) for the install and for dockerd itself.
set -euo pipefail

CACHE_DIR="${VLLMGRID_CACHE_DIR:-$HOME/.cache/pytest-vllmgrid}"
LOG_FILE="$CACHE_DIR/dockerd.log"
PID_FILE="$CACHE_DIR/dockerd.pid"
WAIT_S="${DOCKER_ENGINE_WAIT_S:-60}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "docker-engine.sh: need root (or sudo) to run: $*" >&2; exit 1; fi
}

engine_answers() {
    docker info >/dev/null 2>&1
}

compose_flavour() {
    if docker compose version >/dev/null 2>&1; then echo "docker compose (v2): $(docker compose version --short 2>/dev/null)"
    elif command -v docker-compose >/dev/null; then echo "docker-compose (v1): $(docker-compose version --short 2>/dev/null)"
    else echo "none (install docker-compose or the compose plugin)"; fi
}

print_stop_hint() {
    echo "stop it with: $0 stop   (or: kill \$(cat $PID_FILE))"
}

install_engine() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker >/dev/null || missing+=(docker.io)
    { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing+=(docker-compose)
    command -v iptables >/dev/null || missing+=(iptables)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "docker-engine.sh: missing ${missing[*]} and no apt-get here; install Docker Engine and Compose yourself" >&2
        exit 1
    fi
    echo "installing ${missing[*]} ..."
    local start=$SECONDS
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io docker-compose iptables >/dev/null
    echo "installed in $((SECONDS - start)) s"
}

start_engine() {
    mkdir -p "$CACHE_DIR"
    echo "starting dockerd in the background (log: $LOG_FILE) ..."
    local start=$SECONDS
    local launch=(setsid dockerd)
    [ "$(id -u)" -eq 0 ] || launch=(sudo setsid dockerd)
    # setsid: dockerd must outlive this shell and not get the caller's Ctrl+C.
    "${launch[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    until engine_answers; do
        if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
            echo "docker-engine.sh: dockerd exited; last log lines:" >&2
            tail -n 30 "$LOG_FILE" >&2
            exit 1
        fi
        if [ $((SECONDS - start)) -ge "$WAIT_S" ]; then
            echo "docker-engine.sh: dockerd did not answer within ${WAIT_S} s; see $LOG_FILE" >&2
            exit 1
        fi
        sleep 0.5
    done
    # dockerd's own pid file is authoritative (sudo may sit between us and it).
    [ -s /var/run/docker.pid ] && cp /var/run/docker.pid "$PID_FILE" 2>/dev/null || true
    echo "dockerd answers after $((SECONDS - start)) s (pid $(cat "$PID_FILE"))"
}

stop_engine() {
    if [ ! -s "$PID_FILE" ] || ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "no dockerd started by this script is running"
        rm -f "$PID_FILE"
        return 0
    fi
    local pid
    pid="$(cat "$PID_FILE")"
    as_root kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$PID_FILE"
    echo "dockerd (pid $pid) stopped"
}

case "${1:-start}" in
    start)
        if engine_answers; then
            echo "Docker engine already answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null)); compose: $(compose_flavour)"
            [ -s "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null && print_stop_hint
            exit 0
        fi
        install_engine
        start_engine
        echo "engine $(docker info --format '{{.ServerVersion}}'); compose: $(compose_flavour)"
        print_stop_hint
        ;;
    stop) stop_engine ;;
    status)
        if engine_answers; then echo "answers: $(docker info --format '{{.ServerVersion}}'); compose: $(compose_flavour)"
        else echo "no Docker engine answers"; exit 1; fi
        ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

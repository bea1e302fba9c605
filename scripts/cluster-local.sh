#!/usr/bin/env bash
# A three-node cluster on this machine: its own etcd (loopback ports, a temporary data
# dir) and three queue-server processes sharing one token key, each with its own player,
# control and node-link port. Ctrl-C (or SIGTERM to the script) stops them all: the
# nodes first (each revokes its lease), then etcd.
#
#   scripts/cluster-local.sh              # build (release) and run, logs in the run dir
#
# Node i (1..3): players 127.0.0.1:7i00, control 127.0.0.1:7i01, node link 127.0.0.1:7i02.
# etcd: client 127.0.0.1:23790, peer 127.0.0.1:23800. Needs `etcd` (Debian: etcd-server).
# Try it: `curl -s 127.0.0.1:7101/v1/stats | python3 -m json.tool` shows the `cluster`
# section (members, the owner of queue `default`); players may join through any node
# (`cargo run --release -p queue-client -- join --addr 127.0.0.1:7200 --user 42`) and
# admission works through any control port (`curl -X POST 127.0.0.1:7301/v1/queues/default/admit -d '{"count":1}'`).
#
# Environment (all optional; tests/cluster_local_script.rs uses them):
#   QUEUE_SERVER_BIN=path   run this queue-server binary; skips the release build
#   CLUSTER_PORT_BASE=7000  node i's ports are BASE+100*i, +1 (control), +2 (link)
#   ETCD_CLIENT_PORT=23790  ETCD_PEER_PORT=23800
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${CLUSTER_PORT_BASE:-7000}
ETCD_CLIENT=${ETCD_CLIENT_PORT:-23790}
ETCD_PEER=${ETCD_PEER_PORT:-23800}
command -v etcd >/dev/null || { echo "etcd not found (Debian: apt-get install etcd-server)" >&2; exit 1; }
if [[ -n "${QUEUE_SERVER_BIN:-}" ]]; then
  BIN=$QUEUE_SERVER_BIN
else
  cargo build --release -q -p queue-server
  BIN=target/release/queue-server
fi
[[ -x "$BIN" ]] || { echo "not an executable: $BIN" >&2; exit 1; }
RUN=$(mktemp -d /tmp/queue-cluster.XXXXXX)
echo "run dir: $RUN"
KEY=$(python3 -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())')
ETCD_PID=
NODE_PIDS=()

# Sends SIGTERM to the given pids and waits for them, SIGKILL after 20 s.
end() {
  [[ $# -gt 0 ]] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 200); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}
# The nodes first, so each can still revoke its lease in etcd; then etcd.
stop() {
  trap - EXIT INT TERM HUP
  set +m # no job notices ("Terminated ...") while the children end
  end "${NODE_PIDS[@]}"
  [[ -z "$ETCD_PID" ]] || end "$ETCD_PID"
  echo "stopped; logs and configs in $RUN"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# Job control: each child runs in its own process group, so a Ctrl-C (SIGINT to the
# terminal's foreground group) reaches only this script, which stops the nodes once
# (a second signal would cut a node's graceful stop short) and etcd after them.
set -m

etcd --name local --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER" >"$RUN/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ETCD_CLIENT/health', timeout=1)" 2>/dev/null && break
  sleep 0.1
done

for i in 1 2 3; do
  PLAYER=$((BASE + 100 * i)); CONTROL=$((PLAYER + 1)); LINK=$((PLAYER + 2))
  cat >"$RUN/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:$PLAYER"
cores = 1
[control]
listen = "127.0.0.1:$CONTROL"
[tokens]
key = "$KEY"
[cluster]
etcd = ["http://127.0.0.1:$ETCD_CLIENT"]
node_id = "node$i"
advertise_player = "127.0.0.1:$PLAYER"
advertise_control = "127.0.0.1:$CONTROL"
advertise_link = "127.0.0.1:$LINK"
TOML
  "$BIN" --config "$RUN/node$i.toml" >"$RUN/node$i.log" 2>&1 &
  NODE_PIDS+=($!)
  echo "node$i: players 127.0.0.1:$PLAYER, control 127.0.0.1:$CONTROL (log $RUN/node$i.log)"
done
echo "etcd: 127.0.0.1:$ETCD_CLIENT (log $RUN/etcd.log); Ctrl-C stops all"
wait

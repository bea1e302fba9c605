#!/usr/bin/env bash
# A three-node cluster on this machine: its own etcd (loopback ports, a temporary data
# dir) and three queue-server processes sharing one token key, each with its own player,
# control and node-link port. Ctrl-C (or the end of the script's shell) stops them all.
#
#   scripts/cluster-local.sh              # build (release) and run, logs in the run dir
#
# Node i (1..3): players 127.0.0.1:7i00, control 127.0.0.1:7i01, node link 127.0.0.1:7i02.
# etcd: client 127.0.0.1:23790, peer 127.0.0.1:23800. Needs `etcd` (Debian: etcd-server).
# Try it: `curl -s 127.0.0.1:7101/v1/stats | python3 -m json.tool` shows the `cluster`
# section (members, the owner of queue `default`); players may join through any node
# (`cargo run --release -p queue-client -- join --addr 127.0.0.1:7200 --user 42`) and
# admission works through any control port (`curl -X POST 127.0.0.1:7301/v1/queues/default/admit -d '{"count":1}'`).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v etcd >/dev/null || { echo "etcd not found (Debian: apt-get install etcd-server)" >&2; exit 1; }
cargo build --release -q -p queue-server
RUN=$(mktemp -d /tmp/queue-cluster.XXXXXX)
KEY=$(python3 -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())')
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs and configs in $RUN"
}
trap stop EXIT INT TERM

etcd --name local --data-dir "$RUN/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster local=http://127.0.0.1:23800 >"$RUN/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:23790/health", timeout=1)' 2>/dev/null && break
  sleep 0.1
done

for i in 1 2 3; do
  cat >"$RUN/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:7${i}00"
cores = 1
[control]
listen = "127.0.0.1:7${i}01"
[tokens]
key = "$KEY"
[cluster]
etcd = ["http://127.0.0.1:23790"]
node_id = "node$i"
advertise_player = "127.0.0.1:7${i}00"
advertise_control = "127.0.0.1:7${i}01"
advertise_link = "127.0.0.1:7${i}02"
TOML
  target/release/queue-server --config "$RUN/node$i.toml" >"$RUN/node$i.log" 2>&1 &
  PIDS+=($!)
  echo "node$i: players 127.0.0.1:7${i}00, control 127.0.0.1:7${i}01 (log $RUN/node$i.log)"
done
echo "etcd: 127.0.0.1:23790 (log $RUN/etcd.log); Ctrl-C stops all"
wait

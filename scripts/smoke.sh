#!/usr/bin/env bash
# Smoke test of the release binary: start, log players in, admit, SIGTERM, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
PLAYER=${PLAYER:-17000}
CONTROL=${CONTROL:-17001}
./target/release/queue-server --cores 2 --listen 127.0.0.1:$PLAYER --control 127.0.0.1:$CONTROL &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf localhost:$CONTROL/healthz >/dev/null && break; sleep 0.1; done
python3 - "$PLAYER" <<'PY'
import socket, struct, json, sys
port = int(sys.argv[1])
def conn():
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(5); return s
def send(s, o):
    b = json.dumps(o).encode(); s.sendall(struct.pack(">I", len(b)) + b)
def recv(s):
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))
players = []
for u in range(3):
    s = conn(); send(s, {"cmd": "login", "seq": 1, "data": {"user_id": u}})
    r = recv(s); assert r["code"] == 0 and r["data"]["position"] == u + 1, r
    players.append(s)
print("3 players logged in, positions 1..3")
PY
curl -sf -X POST localhost:$CONTROL/v1/queues/default/admit -d '{"count":1}' | head -c 200; echo
curl -sf localhost:$CONTROL/v1/stats; echo
kill -TERM $PID
wait $PID
echo "exit status $? after SIGTERM"

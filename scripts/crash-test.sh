#!/usr/bin/env bash
# Crash test of durability: runs load against the release server, kill -9s it at a
# random moment, restarts it on the same directory, and checks, against the client's own
# record of acknowledged logins and admissions, that every acknowledged join is still
# queued (resumed, in order) or admitted, with no duplicates and no user admitted twice.
#
#   scripts/crash-test.sh [KILLS] [FSYNC]        # defaults: 50 always
#
# Prints the kills survived and the violations (must be 0 with fsync = "always"; with
# "everysec"/"none" a kill -9 must not lose anything either, since records reach the OS
# before any answer: those policies only lose on power loss). Exit status 1 on any
# violation. Traffic stays on 127.0.0.1; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-50}
FSYNC=${2:-always}
cargo build --release -q
WORK=$(mktemp -d /tmp/qs-crash.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
python3 - "$KILLS" "$FSYNC" "$WORK" ./target/release/queue-server <<'PY'
import json, os, random, resource, selectors, signal, socket, struct, subprocess, sys, threading, time
import urllib.error, urllib.request

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

KILLS, FSYNC, WORK, BIN = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
rng = random.Random(int(os.environ.get("SEED", "12345")))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

PLAYER, CONTROL = free_port(), free_port()
DATA = os.path.join(WORK, "data")
CONFIG = os.path.join(WORK, "config.toml")
with open(CONFIG, "w") as f:
    f.write(f"""[server]
listen = "127.0.0.1:{PLAYER}"
reconnect_grace_secs = 3600
idle_timeout_secs = 300
[control]
listen = "127.0.0.1:{CONTROL}"
[tokens]
key = "{KEY}"
ttl_secs = 3600
[durability]
dir = "{DATA}"
fsync = "{FSYNC}"
snapshot_interval_secs = 1
""")
LOG = open(os.path.join(WORK, "server.log"), "ab")

def frame(o):
    b = json.dumps(o).encode(); return struct.pack(">I", len(b)) + b

def read_frame(s):
    h = s.recv(4, socket.MSG_WAITALL)
    if len(h) < 4: raise ConnectionError("closed")
    n = struct.unpack(">I", h)[0]
    b = s.recv(n, socket.MSG_WAITALL)
    if len(b) < n: raise ConnectionError("closed")
    return json.loads(b)

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def http(method, path, body=None, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{CONTROL}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with OPENER.open(req, timeout=timeout) as r:
            text = r.read()
            return r.status, json.loads(text) if path != "/healthz" else text
    except urllib.error.HTTPError as e:
        return e.code, None

# The client's own record. user -> dict(send, ack, state) with state one of
# "waiting" (join acknowledged), "unknown" (join sent, no answer before the kill),
# "admitted" (admission acknowledged: admit reply, admitted push, or found at re-login),
# "used" (token verified valid), "maybe_used" (verify sent, no answer: left out of checks).
users, tokens = {}, {}
lock = threading.Lock()
violations = []
next_user = [1]
# What the restarts found: joins in flight at the kill that landed / did not, and
# admissions in flight at the kill that landed (seen only at re-login).
found = {"inflight_join_kept": 0, "inflight_join_lost": 0, "admission_found_at_relogin": 0}

def violation(msg):
    with lock:
        violations.append(msg)
    print("VIOLATION:", msg, flush=True)

def start_server():
    p = subprocess.Popen([BIN, "--cores", "2", "--config", CONFIG], stdout=LOG, stderr=LOG)
    deadline = time.time() + 20
    while time.time() < deadline:
        if p.poll() is not None:
            print(open(os.path.join(WORK, "server.log")).read()[-3000:])
            sys.exit(f"server exited with {p.returncode} at start")
        try:
            if http("GET", "/healthz", timeout=1)[0] == 200: return p
        except Exception:
            pass
        time.sleep(0.02)
    p.kill(); sys.exit("server did not come up")

def admitted(user, token):
    with lock:
        u = users[user]
        if u["state"] in ("used", "maybe_used"):
            return
        if token is not None:
            if user in tokens and tokens[user] != token:
                violation(f"user {user} got two different tokens")
            tokens[user] = token
        u["state"] = "admitted"

def load(stop):
    """Joiners, an admitter, a verifier and a push reader until `stop` is set."""
    sel = selectors.DefaultSelector(); sel_lock = threading.Lock(); socks = []
    def joiner():
        while not stop.is_set():
            with lock:
                user = next_user[0]; next_user[0] += 1
                users[user] = {"send": time.monotonic(), "ack": None, "state": "unknown"}
            try:
                s = socket.create_connection(("127.0.0.1", PLAYER), timeout=5)
                s.sendall(frame({"cmd": "login", "seq": 1, "data": {"user_id": user}}))
                r = read_frame(s)
            except Exception:
                return
            if r.get("code") != 0:
                violation(f"login of new user {user} refused: {r}"); s.close(); return
            with lock:
                users[user]["ack"] = time.monotonic()
                if users[user]["state"] == "unknown":
                    users[user]["state"] = "waiting"
            s.setblocking(False)
            with sel_lock:
                sel.register(s, selectors.EVENT_READ, (user, bytearray())); socks.append(s)
            time.sleep(rng.random() * 0.004)
    def reader():
        while not stop.is_set():
            with sel_lock:
                ready = sel.select(timeout=0) if socks else []
            if not ready:
                time.sleep(0.002); continue
            for key, _ in ready:
                user, buf = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except Exception:
                    chunk = b""
                if not chunk:
                    with sel_lock: sel.unregister(key.fileobj)
                    continue
                buf += chunk
                while len(buf) >= 4:
                    n = struct.unpack(">I", buf[:4])[0]
                    if len(buf) < 4 + n: break
                    msg = json.loads(bytes(buf[4:4 + n])); del buf[:4 + n]
                    if msg.get("cmd") == "admitted":
                        admitted(user, msg["data"]["token"])
    def admitter():
        while not stop.is_set():
            try:
                code, body = http("POST", "/v1/queues/default/admit", {"count": rng.randint(1, 20)})
            except Exception:
                return
            if code != 200:
                violation(f"admit answered {code}"); return
            for a in body["admitted"]:
                admitted(a["user_id"], a["token"])
            time.sleep(0.02)
    def verifier():
        while not stop.is_set():
            time.sleep(0.05)
            with lock:
                cands = [u for u, t in tokens.items() if users[u]["state"] == "admitted"]
                if not cands: continue
                user = rng.choice(cands); users[user]["state"] = "maybe_used"
            try:
                code, body = http("POST", "/v1/tokens/verify", {"token": tokens[user]})
            except Exception:
                return
            if code == 200 and body["valid"]:
                with lock: users[user]["state"] = "used"
            else:
                violation(f"fresh token of user {user} did not verify: {code} {body}")
    threads = [threading.Thread(target=f, daemon=True) for f in
               [joiner, joiner, joiner, reader, admitter, verifier]]
    for t in threads: t.start()
    return threads, socks

def verify_after_restart():
    """Logs every known user in again and checks the queue against the record."""
    with lock:
        todo = [u for u, r in users.items() if r["state"] in ("waiting", "unknown", "admitted")]
    positions = {}
    for i in range(0, len(todo), 200):
        batch = todo[i:i + 200]; conns = []
        for user in batch:
            s = socket.create_connection(("127.0.0.1", PLAYER), timeout=10)
            sent = time.monotonic()
            s.sendall(frame({"cmd": "login", "seq": 1, "data": {"user_id": user}}))
            conns.append((user, s, sent))
        for user, s, sent in conns:
            r = read_frame(s); rec = users[user]
            if r.get("code") != 0:
                violation(f"re-login of {user} refused: {r}"); s.close(); continue
            d = r["data"]
            if d["state"] == "admitted":
                push = read_frame(s)
                while push.get("cmd") != "admitted": push = read_frame(s)
                if rec["state"] == "admitted" and user in tokens and tokens[user] != push["data"]["token"]:
                    violation(f"user {user}: token changed across the restart")
                if not d["resumed"]:
                    violation(f"user {user}: admitted but resumed=false")
                if rec["state"] != "admitted":
                    found["admission_found_at_relogin"] += 1
                admitted(user, push["data"]["token"])
            else:
                if rec["state"] == "admitted":
                    violation(f"user {user}: admitted before the crash, waiting again (would be admitted twice)")
                elif rec["state"] == "waiting" and not d["resumed"]:
                    violation(f"user {user}: acknowledged join lost its place")
                if rec["state"] == "unknown":
                    found["inflight_join_kept" if d["resumed"] else "inflight_join_lost"] += 1
                    if not d["resumed"]: rec["send"] = sent   # joined only now
                    rec["ack"] = time.monotonic(); rec["state"] = "waiting"
                if d["position"] in positions:
                    violation(f"position {d['position']} held by {positions[d['position']]} and {user}")
                positions[d["position"]] = user
            s.close()
    # Order: an acknowledged join is ahead of every join sent after its answer.
    waiting = sorted(positions.items())
    max_send = -1.0
    for pos, user in waiting:
        r = users[user]
        if r["ack"] < max_send:
            violation(f"user {user} at {pos} is behind a user who joined after it was answered")
        max_send = max(max_send, r["send"])
    # Admission takes the head: nobody admitted who joined after a still-waiting user's answer.
    with lock:
        adm_send = [r["send"] for r in users.values() if r["state"] in ("admitted", "used", "maybe_used")]
    if waiting and adm_send:
        if min(users[u]["ack"] for _, u in waiting) < max(adm_send):
            violation("a user was admitted ahead of an earlier acknowledged join")
    if waiting and [p for p, _ in waiting] != list(range(1, len(waiting) + 1)):
        violation(f"positions are not 1..{len(waiting)}")
    code, stats = http("GET", "/v1/stats")
    if stats["queues"]["default"]["waiting"] != len(waiting):
        violation(f"server holds {stats['queues']['default']['waiting']} places, the client knows {len(waiting)}")
    # Used jtis stay used.
    with lock:
        used = [u for u, r in users.items() if r["state"] == "used"]
    for user in rng.sample(used, min(5, len(used))):
        code, body = http("POST", "/v1/tokens/verify", {"token": tokens[user]})
        if code != 200 or body["valid"] or body["reason"] != "already_used":
            violation(f"used token of {user} verified again after the restart: {body}")
    return len(waiting)

kills = 0
server = None
try:
    for cycle in range(KILLS + 1):
        server = start_server()
        waiting = verify_after_restart() if cycle > 0 else 0
        if cycle == KILLS:
            server.terminate(); server.wait(); break
        stop = threading.Event()
        threads, socks = load(stop)
        time.sleep(rng.uniform(0.2, 1.2))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        for t in threads: t.join(timeout=10)
        for s in socks: s.close()
        kills += 1
        with lock:
            st = {}
            for r in users.values(): st[r["state"]] = st.get(r["state"], 0) + 1
        print(f"kill {kills}: {waiting} waiting after the previous restart; client record {st}", flush=True)
finally:
    if server is not None and server.poll() is None:
        server.kill(); server.wait()

log = open(os.path.join(WORK, "server.log"), errors="replace").read()
print(f"restarts found: {found}; torn tails dropped: {log.count('dropped a torn record')}")
print(f"fsync={FSYNC} kills survived: {kills}, users: {len(users)}, violations: {len(violations)}")
sys.exit(1 if violations else 0)
PY

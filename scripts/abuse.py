#!/usr/bin/env python3
"""Issue 7 acceptance run: every attack against a real queue-server, one table row each.

Usage: abuse.py [--bin target/release/queue-server] [--quick] [--only ROW,ROW]

Starts the release binary (several instances: one per config the attacks need) on free
127.0.0.1 ports with a temporary config, runs each attack, then checks that the server
process is alive and that other clients are still served (GET /healthz answers 200 and a
fresh player logs in and gets its answer). Prints the table

    row | attack | answer | server alive | other clients served | ok

and exits 1 if any row is not as expected or a server died, 0 otherwise.

Rules kept: only 127.0.0.1; every wait has a deadline and every loop a bound; the whole
run has a watchdog (--budget seconds); every server started is killed at exit (atexit
and signal handlers here, plus the pid file that scripts/abuse.sh kills from). Standard
library only.
"""

import argparse
import atexit
import base64
import hashlib
import hmac
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
# Longest wait for any single answer (seconds).
WAIT = 5.0
# HS256 secret of the jwt server's tickets (auth.key), at least 32 bytes.
SECRET = b"abuse-ticket-secret-abuse-ticket-secret"
# A fixed Ed25519 seed for admission tokens of the durable server.
TOKENS_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
# Most bytes kept from any one answer.
ANSWER_BYTES_MAX = 1 << 20

SERVERS = []
PIDFILE = os.environ.get("ABUSE_PIDFILE")


def now():
    return time.monotonic()


class Timeout(Exception):
    """A deadline passed."""


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_hs256(claims, secret=SECRET, header=None):
    head = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64u(sig)}"


def ticket(user):
    return jwt_hs256({"sub": str(user), "exp": int(time.time()) + 600})


def deep_header_token(depth):
    """A JWT whose header is `depth` nested arrays; claims and signature are filler."""
    header = ("[" * depth + "]" * depth).encode()
    claims = json.dumps({"sub": "1", "exp": int(time.time()) + 600}).encode()
    return f"{b64u(header)}.{b64u(claims)}.{b64u(b'x' * 32)}"


_next_user = [5_000_000]


def fresh_user():
    _next_user[0] += 1
    return _next_user[0]


def short(text, n=72):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def how_closed(p):
    return "reset" if p.reset else "closed"


def fmt(v):
    """A frame, shortly."""
    if v is None:
        return "closed"
    if not isinstance(v, dict):
        return short(v, 50)
    code = v.get("code")
    if code not in (None, 0):
        return short(f"{v.get('cmd') or '-'} code={code} {v.get('msg', '')}", 60)
    return short(f"{v.get('cmd')} {json.dumps(v.get('data'))}", 60)


# ------------------------------------------------------------------------------------
# HTTP


def http(port, method, path, body=None, timeout=WAIT):
    """One request on a fresh connection. Returns (status or None, body text or why)."""
    data = body.encode() if isinstance(body, str) else (body or b"")
    req = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    deadline = now() + timeout
    try:
        s = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as e:
        return None, f"connect: {e.strerror or e}"
    raw = b""
    with s:
        try:
            s.sendall(req)
            while not _http_complete(raw) and len(raw) < ANSWER_BYTES_MAX:
                left = deadline - now()
                if left <= 0:
                    return None, f"no answer in {timeout:g}s"
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except socket.timeout:
            return None, f"no answer in {timeout:g}s"
        except OSError as e:
            if not raw:
                return None, f"connection error: {e.strerror or e}"
    return _http_parse(raw)


def _http_complete(raw):
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(rest) >= int(value.strip())
            except ValueError:
                return False
    return False


def _http_parse(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, f"not HTTP: {short(raw[:60])!r}" if raw else "closed, no answer"
    if b"transfer-encoding: chunked" in head.lower():
        out, left = b"", rest
        for _ in range(10000):
            size, sep, tail = left.partition(b"\r\n")
            if not sep:
                break
            try:
                n = int(size.strip() or b"0", 16)
            except ValueError:
                break
            if n == 0:
                break
            out += tail[:n]
            left = tail[n + 2 :]
        rest = out
    return status, rest.decode("utf-8", "replace")


def json_or_text(text):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


# ------------------------------------------------------------------------------------
# Player client


class Player:
    """One player connection speaking frames; every read has a deadline."""

    def __init__(self, port, rcvbuf=None, timeout=WAIT):
        self.s = socket.socket()
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect((HOST, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pushes = []
        # The server's close came as a reset (it closed with our bytes unread): frames
        # it sent just before may be lost with it.
        self.reset = False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def send(self, obj):
        self.s.sendall(frame(obj))

    def send_raw(self, data):
        """Sends what the server takes; a server that closed early is not an error."""
        try:
            self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fill(self, deadline):
        left = deadline - now()
        if left <= 0:
            raise Timeout("no frame before the deadline")
        self.s.settimeout(left)
        try:
            data = self.s.recv(65536)
        except socket.timeout:
            raise Timeout("no frame before the deadline") from None
        if not data:
            raise EOFError
        self.buf += data

    def recv(self, deadline=None):
        """The next frame (a dict), or None once the server closed. Raises Timeout."""
        deadline = deadline or now() + WAIT
        try:
            while len(self.buf) < 4:
                self._fill(deadline)
            n = struct.unpack(">I", self.buf[:4])[0]
            if n > ANSWER_BYTES_MAX:
                return {"cmd": "?", "code": "huge frame", "msg": str(n)}
            while len(self.buf) < 4 + n:
                self._fill(deadline)
        except EOFError:
            return None
        except ConnectionResetError:
            self.reset = True
            return None
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        try:
            return json.loads(body)
        except ValueError:
            return {"cmd": "?", "code": "not JSON", "msg": short(body[:40])}

    def request(self, cmd, seq, data, deadline=None):
        """Sends a request, returns its response (pushes kept aside) or None if closed."""
        deadline = deadline or now() + WAIT
        self.send({"cmd": cmd, "seq": seq, "data": data})
        for _ in range(100000):
            v = self.recv(deadline)
            if v is None or (v.get("seq") == seq and v.get("cmd") == cmd):
                return v
            self.pushes.append(v)
        raise Timeout("too many frames")

    def until_closed(self, deadline, limit=100000):
        """Every frame until the server closes; raises Timeout if it does not."""
        frames = []
        for _ in range(limit):
            v = self.recv(deadline)
            if v is None:
                return frames
            frames.append(v)
        raise Timeout("too many frames")


# ------------------------------------------------------------------------------------
# Servers


class Server:
    """One queue-server process with its own config and log, on free ports."""

    def __init__(self, name, binary, workdir, toml, jwt=False):
        self.name = name
        self.binary = binary
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.toml = toml
        self.jwt = jwt
        self.proc = None
        self.crashes = []
        self.seen = set()
        self.player = self.control = None

    def start(self):
        """Starts and waits for /healthz 200. Returns None, or why it did not start."""
        self.player, self.control = free_port(), free_port()
        path = os.path.join(self.dir, "config.toml")
        with open(path, "w") as f:
            f.write(
                self.toml.replace("[server]", f'[server]\nlisten = "{HOST}:{self.player}"', 1)
                + f'\n[control]\nlisten = "{HOST}:{self.control}"\n'
            )
        self.log_path = os.path.join(self.dir, "server.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--cores", "2", "--config", path],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": "info"},
        )
        log.close()
        SERVERS.append(self)
        if PIDFILE:
            with open(PIDFILE, "a") as f:
                f.write(f"{self.proc.pid}\n")
        deadline = now() + 15
        while now() < deadline:
            if self.proc.poll() is not None:
                return f"exited {self.proc.returncode}: {short(self.log_tail(2), 120)}"
            status, _ = http(self.control, "GET", "/healthz", timeout=1)
            if status == 200:
                return None
            time.sleep(0.05)
        self.kill()
        return "no /healthz 200 within 15 s"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def ensure(self):
        """Restarts a dead server (remembering how it died); returns a note or ''."""
        if self.alive():
            return ""
        self.note_death()
        why = self.start()
        if why:
            raise RuntimeError(f"server {self.name} does not start: {why}")
        return "restarted"

    def note_death(self):
        """Remembers how a dead process ended (once per process)."""
        if self.proc is not None and self.proc.poll() is not None and self.proc.pid not in self.seen:
            self.seen.add(self.proc.pid)
            self.crashes.append(f"exit {self.proc.returncode}: {self.log_tail(2)}")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def log_tail(self, n):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def kill(self):
        if self.alive():
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def kill_all():
    for s in SERVERS:
        s.kill()


def served(srv):
    """GET /healthz answers 200 and a fresh player logs in (then leaves)."""
    if not srv.alive():
        return False, "server dead"
    status, body = http(srv.control, "GET", "/healthz")
    if status != 200:
        return False, f"/healthz: {status or ''} {short(body, 30)}"
    user = fresh_user()
    data = {"user_id": user}
    if srv.jwt:
        data["ticket"] = ticket(user)
    try:
        p = Player(srv.player)
        try:
            v = p.request("login", 1, data)
            if v is None or v.get("code") != 0:
                return False, f"login: {fmt(v)}"
            p.send({"cmd": "leave", "seq": 2})
        finally:
            p.close()
    except (OSError, Timeout) as e:
        return False, f"login: {e}"
    return True, "yes"


# ------------------------------------------------------------------------------------
# Attacks. Each returns (answer text, as expected?).


def slow_body(srv):
    s = socket.create_connection((HOST, srv.control), timeout=WAIT)
    try:
        s.sendall(
            b"POST /v1/queues/default/admit HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"
        )
        time.sleep(0.3)  # let the server start on the held request
        status, body = http(srv.control, "GET", "/healthz")
        held = _peek_answer(s, 1.0)
        return f"other GET /healthz: {status or body}; held conn: {held}", status == 200
    finally:
        s.close()


def healthz_declared_body(srv):
    s = socket.create_connection((HOST, srv.control), timeout=WAIT)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        time.sleep(0.3)
        status, body = http(srv.control, "GET", "/healthz")
        held = _peek_answer(s, 1.0)
        return f"other GET /healthz: {status or body}; held conn: {held}", status == 200
    finally:
        s.close()


def _peek_answer(s, timeout):
    """What a held connection received within `timeout`, shortly."""
    deadline = now() + timeout
    raw = b""
    try:
        while len(raw) < 4096:
            left = deadline - now()
            if left <= 0:
                break
            s.settimeout(left)
            chunk = s.recv(4096)
            if not chunk:
                return short(raw.split(b"\r\n")[0].decode("utf-8", "replace"), 30) + " +closed" if raw else "closed"
            raw += chunk
    except socket.timeout:
        pass
    except OSError as e:
        return f"error {e.strerror or e}"
    return short(raw.split(b"\r\n")[0].decode("utf-8", "replace"), 30) if raw else "nothing yet"


def nested_admit_body(srv):
    depth = 32000
    body = '{"count":1,"x":' + "[" * depth + "]" * depth + "}"
    status, text = http(srv.control, "POST", "/v1/queues/default/admit", body)
    return f"{status or ''} {short(text, 50)} ({len(body)} B)", status == 400


def verify_deep_header(srv):
    token = deep_header_token(20000)
    status, text = http(srv.control, "POST", "/v1/tokens/verify", json.dumps({"token": token}))
    v = json_or_text(text)
    ok = status == 200 and v == {"valid": False, "reason": "malformed"}
    return f"{status or ''} {short(text, 50)}", ok


def login_deep_ticket(srv):
    p = Player(srv.player)
    try:
        v = p.request("login", 1, {"user_id": 1, "ticket": deep_header_token(20000)})
        rest = p.until_closed(now() + WAIT)
        closed = "closed" if rest is not None else ""
        return f"{fmt(v)}; {closed}", v is not None and v.get("code") == 4
    finally:
        p.close()


def core_deadlock(srv, players=300):
    conns = []
    try:
        for i in range(players):
            p = Player(srv.player)
            conns.append(p)
            v = p.request("login", 1, {"user_id": 100 + i})
            if v is None or v.get("code") != 0:
                return f"login {i}: {fmt(v)}", False
        status, text = http(
            srv.control, "POST", "/v1/queues/default/admit", json.dumps({"count": players}), timeout=15
        )
        admitted = json_or_text(text).get("admitted", []) if status == 200 else []
        got = 0
        deadline = now() + 15
        for p in conns:
            try:
                for _ in range(10000):
                    v = p.recv(deadline)
                    if v is None:
                        break
                    if v.get("cmd") == "admitted":
                        got += 1
                        break
            except Timeout:
                break
        st, _ = http(srv.control, "GET", "/v1/stats")
        ok = status == 200 and len(admitted) == players and got == players and st == 200
        http_part = (
            f"{status} {len(admitted)} admitted" if status == 200 else f"{status or ''} {short(text, 25)}"
        )
        return f"HTTP {http_part}; pushes {got}/{players}; stats {st or 'no answer'}", ok
    finally:
        for p in conns:
            p.close()


def bad_numbers(srv):
    s1, t1 = http(srv.control, "PUT", "/v1/queues/default/rate", '{"per_second": 1e300}')
    s2, t2 = http(
        srv.control,
        "PUT",
        "/v1/queues/default/capacity",
        '{"online": 0, "capacity": 18446744073709551615}',
    )
    # Leave the queue as it was: manual admission only.
    http(srv.control, "PUT", "/v1/queues/default/rate", '{"per_second": 0}')
    return f"rate: {s1 or t1}; capacity: {s2 or t2}", s1 == 400 and s2 == 400


def churn(port, users, deadline, tick=None, in_flight=200):
    """`login` + `leave` for each user id, each on its own connection, `in_flight` at a
    time; `tick()` is called about every 5 s. Returns (joined and left, failures, first
    failure)."""
    next_tick = now() + 5
    sel = selectors.DefaultSelector()
    it = iter(users)
    done = failed = 0
    first_failure = ""
    open_conns = 0

    def launch():
        nonlocal failed, first_failure
        user = next(it, None)
        if user is None:
            return False
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((HOST, port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            failed += 1
            first_failure = first_failure or f"connect: {os.strerror(err)}"
            return True
        state = {"user": user, "out": frame({"cmd": "login", "seq": 1, "data": {"user_id": user}})
                 + frame({"cmd": "leave", "seq": 2}), "in": b""}
        sel.register(s, selectors.EVENT_WRITE, state)
        return True

    for _ in range(in_flight):
        if not launch():
            break
        open_conns += 1
    while open_conns and now() < deadline:
        if tick and now() >= next_tick:
            tick()
            next_tick = now() + 5
        for key, ev in sel.select(timeout=min(1.0, max(0.0, deadline - now()))):
            s, st = key.fileobj, key.data
            finished = False
            try:
                if ev & selectors.EVENT_WRITE and st["out"]:
                    n = s.send(st["out"])
                    st["out"] = st["out"][n:]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
                elif ev & selectors.EVENT_READ:
                    data = s.recv(65536)
                    if data:
                        st["in"] += data
                    else:
                        finished = True
            except OSError as e:
                st["err"] = e.strerror or str(e)
                finished = True
            if finished:
                sel.unregister(s)
                s.close()
                open_conns -= 1
                answers = _frames(st["in"])
                codes = [a.get("code") for a in answers if a.get("seq") in (1, 2)]
                if codes == [0, 0]:
                    done += 1
                else:
                    failed += 1
                    first_failure = first_failure or (
                        st.get("err") or "; ".join(fmt(a) for a in answers) or "closed"
                    )
                if launch():
                    open_conns += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return done, failed, first_failure


def _frames(raw):
    out = []
    for _ in range(1000):
        if len(raw) < 4:
            break
        n = struct.unpack(">I", raw[:4])[0]
        if len(raw) < 4 + n:
            break
        try:
            out.append(json.loads(raw[4 : 4 + n]))
        except ValueError:
            out.append({"cmd": "?", "code": "not JSON"})
        raw = raw[4 + n :]
    return out


def ring_growth(srv, per_round):
    status, text = http(srv.control, "POST", "/v1/queues/default/pause")
    if status != 200:
        return f"pause: {status or ''} {short(text, 40)}", False
    head = Player(srv.player)
    try:
        v = head.request("login", 1, {"user_id": 1})
        if v is None or v.get("code") != 0:
            return f"head login: {fmt(v)}", False
        rss = [srv.rss_mib()]
        t0 = now()
        base = 20_000_000
        for r in range(2):
            users = range(base + r * per_round, base + (r + 1) * per_round)
            # The head heartbeats (unread answers are tiny) so it is never idle.
            done, failed, why = churn(
                srv.player, users, now() + 75, tick=lambda: head.send({"cmd": "heartbeat"})
            )
            if not srv.alive():
                return f"server died in round {r + 1}", False
            if done != per_round:
                return f"round {r + 1}: {done} ok, {failed} failed ({short(why, 40)})", False
            # The head stays: it is not idle.
            head.request("heartbeat", 10 + r, {})
            rss.append(srv.rss_mib())
        grow2 = rss[2] - rss[1]
        # Without compaction every join+leave keeps a slot (~20 B) behind the head, and the
        # ring doubles: the second round adds several MiB more. With it, nothing stays.
        ok = grow2 <= 3.0
        if per_round < 200_000:
            ok_note = " (--quick: too few to show growth)"
        else:
            ok_note = ""
        answer = (
            f"RSS {rss[0]:.1f} -> {rss[1]:.1f} -> {rss[2]:.1f} MiB "
            f"({per_round} x2 in {now() - t0:.0f}s; 2nd round {grow2:+.1f} MiB){ok_note}"
        )
        return answer, ok
    finally:
        head.close()
        http(srv.control, "POST", "/v1/queues/default/resume")


def stale_leave(srv, tries=30):
    """U is admitted on A, logs in again on B; A's `leave` races B's login (sent right
    after it, before A read its kick), with a few delays to hit the window where the core
    applies A's stale leave after B's login. Whenever B is answered `admitted`, B's token
    must verify. (When A's leave wins the race, B rightly joins as a new waiting player:
    that try proves nothing and is only counted.)"""
    delays = [0, 0.0001, 0.0003, 0.0005, 0.001, 0.002]
    admitted = bad = waiting = 0
    first_bad = ""
    kicks = set()
    t_end = now() + 20
    for i in range(tries):
        if now() >= t_end:
            break
        user = fresh_user()
        a = Player(srv.player)
        b = None
        try:
            v = a.request("login", 1, {"user_id": user, "queue": "stale"})
            if v is None or v.get("code") != 0:
                return f"A login: {fmt(v)}", False
            status, text = http(srv.control, "POST", "/v1/queues/stale/admit", '{"count": 1}')
            grants = json_or_text(text).get("admitted", []) if status == 200 else []
            if len(grants) != 1 or grants[0].get("user_id") != user:
                return f"admit: {status or ''} {short(text, 40)}", False
            token = grants[0]["token"]
            b = Player(srv.player)
            b.send({"cmd": "login", "seq": 1, "data": {"user_id": user, "queue": "stale"}})
            if delays[i % len(delays)]:
                time.sleep(delays[i % len(delays)])
            a.send_raw(frame({"cmd": "leave", "seq": 2}))  # before reading its kick
            deadline = now() + WAIT
            vb = None
            for _ in range(100):
                vb = b.recv(deadline)
                if vb is None or (vb.get("cmd") == "login" and vb.get("seq") == 1):
                    break
                b.pushes.append(vb)
            if vb is None or vb.get("code") != 0:
                bad += 1
                first_bad = first_bad or f"try {i + 1}: B login {fmt(vb)}"
                continue
            try:
                frames = a.until_closed(now() + WAIT)
            except Timeout:
                frames = []
            kicks.update(f["data"]["reason"] for f in frames if f.get("cmd") == "kicked")
            if vb["data"].get("state") != "admitted":
                waiting += 1
                b.request("leave", 2, {})  # leave the queue empty for the next try
                continue
            admitted += 1
            b_token = next((p["data"]["token"] for p in b.pushes if p.get("cmd") == "admitted"), None)
            if b_token is None:
                try:
                    for _ in range(100):
                        f = b.recv(now() + 1)
                        if f is None:
                            break
                        if f.get("cmd") == "admitted":
                            b_token = f["data"]["token"]
                            break
                except Timeout:
                    pass
            status, text = http(
                srv.control, "POST", "/v1/tokens/verify", json.dumps({"token": b_token or token})
            )
            v = json_or_text(text)
            if not (status == 200 and isinstance(v, dict) and v.get("valid") is True):
                bad += 1
                first_bad = first_bad or f"try {i + 1}: {status or ''} {short(text, 40)}"
        finally:
            a.close()
            if b:
                b.close()
    answer = (
        f"B admitted in {admitted} tries, B's token valid in {admitted - bad}; "
        f"{waiting} lost the race; A kicked: {','.join(sorted(kicks)) or 'no'}"
    )
    if first_bad:
        answer += f"; {first_bad}"
    return answer, bad == 0 and admitted >= 5


def readyz(srv):
    status, text = http(srv.control, "GET", "/readyz")
    note = "(live server only: the core cannot be wedged from outside cheaply)"
    return f"{status or ''} {short(text, 20)} {note}", status == 200


def auto_expire(srv, names=10, batch=3):
    accepted = 0
    refused = ""
    t0 = now()
    row_deadline = t0 + 30
    for start in range(0, names, batch):
        for i in range(start, min(names, start + batch)):
            name = f"auto-{i}"
            # The previous batch's queues expire after 1 s: retry a refused name until
            # then (bounded).
            deadline = min(now() + 8, row_deadline)
            while True:
                p = Player(srv.player)
                try:
                    v = p.request("login", 1, {"user_id": fresh_user(), "queue": name})
                    if v is not None and v.get("code") == 0:
                        p.request("leave", 2, {})
                        accepted += 1
                        break
                finally:
                    p.close()
                if now() >= deadline:
                    refused = refused or f"{name}: {fmt(v)}"
                    break
                time.sleep(0.2)
    answer = f"{accepted}/{names} names accepted in {now() - t0:.1f}s"
    if refused:
        answer += f"; {refused}"
    return answer, accepted == names


def second_sigterm(srv):
    """The final snapshot is stalled for good (its temp file is a FIFO nobody reads, as
    a hung disk would), SIGTERM starts the stop, a second SIGTERM must end it."""
    p = Player(srv.player)
    try:
        v = p.request("login", 1, {"user_id": fresh_user()})
        if v is None or v.get("code") != 0:
            return f"login: {fmt(v)}", False
        os.mkfifo(os.path.join(srv.dir, "data", "snapshot.bin.tmp"))
        srv.proc.send_signal(signal.SIGTERM)
        deadline = now() + WAIT
        draining = False
        while now() < deadline and not draining:
            status, _ = http(srv.control, "GET", "/healthz", timeout=1)
            draining = status == 503
            if not draining:
                time.sleep(0.05)
        if not draining:
            return "no /healthz 503 after SIGTERM", False
        t0 = now()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()
            return "still running 5 s after the 2nd SIGTERM (killed)", False
        return f"exit {code} {now() - t0:.2f}s after the 2nd SIGTERM", code != 0
    finally:
        p.close()


# Player-port attacks.


def bad_header(data):
    def attack(srv):
        p = Player(srv.player)
        try:
            p.send_raw(data)
            frames = p.until_closed(now() + WAIT)
            first = fmt(frames[0]) if frames else "no frame"
            ok = not frames or frames[0].get("code") == 1
            return f"{first}; {how_closed(p)}", ok
        finally:
            p.close()

    return attack


def brackets_after_header(srv):
    p = Player(srv.player)
    try:
        v = p.request("login", 1, {"user_id": fresh_user()})
        if v is None or v.get("code") != 0:
            return f"login: {fmt(v)}", False
        p.send_raw(struct.pack(">I", 4096) + b"[" * 65536)
        frames = [f for f in p.until_closed(now() + WAIT) if f.get("cmd") != "position"]
        first = fmt(frames[0]) if frames else "no answer"
        # The BAD_FRAME answer is sent, but the server closes with ~60 KB of ours unread,
        # so the kernel resets the connection and the answer may be lost with it.
        ok = (frames and frames[0].get("code") == 1) or (not frames and p.reset)
        return f"{first}; {how_closed(p)}", bool(ok)
    finally:
        p.close()


def garbage(srv):
    rng = random.Random(7)
    p = Player(srv.player)
    try:
        p.send_raw(bytes(rng.randrange(256) for _ in range(4096)))
        frames = p.until_closed(now() + WAIT)
        first = fmt(frames[0]) if frames else "no frame"
        return f"{first}; {how_closed(p)}", not frames or frames[0].get("code") == 1
    finally:
        p.close()


def slow_consumer(srv):
    p = Player(srv.player, rcvbuf=4096)
    try:
        v = p.request("login", 1, {"user_id": fresh_user()})
        if v is None or v.get("code") != 0:
            return f"login: {fmt(v)}", False
        p.s.setblocking(False)
        hb = frame({"cmd": "heartbeat", "seq": 7, "data": {}})
        sent = 0
        stalls = 0
        deadline = now() + 10
        # Stop at the first lasting stall: the server no longer reads (it cut us off),
        # and it waits 2 s at most for us to read its `kicked` before it resets.
        while sent < 300000 and stalls < 3 and now() < deadline:
            try:
                p.s.send(hb)
                sent += 1
            except BlockingIOError:
                stalls += 1
                selectors_wait_writable(p.s, 0.1)
            except (BrokenPipeError, ConnectionResetError):
                break
        p.s.setblocking(True)
        frames = p.until_closed(now() + 15, limit=400000)
        kick = [f for f in frames if f.get("cmd") == "kicked"]
        reason = kick[0]["data"]["reason"] if kick else "none"
        # A reset may swallow the `kicked` frame (the server closed with our heartbeats
        # unread): being cut off is what counts.
        ok = reason == "slow_consumer" or (not kick and p.reset and len(frames) < sent)
        answer = f"sent {sent} heartbeats, read {len(frames)} frames, kicked: {reason}; {how_closed(p)}"
        return answer, ok
    except Timeout:
        return "not closed within 15 s", False
    finally:
        p.close()


def selectors_wait_writable(s, timeout):
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_WRITE)
        sel.select(timeout)


def no_login(srv, count=1000, login_timeout=2):
    conns = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, srv.player), timeout=WAIT)
            conns.append(s)
        meanwhile, why = served(srv)
        deadline = now() + login_timeout + 8
        closed = 0
        for s in conns:
            try:
                s.settimeout(max(0.01, deadline - now()))
                while len(s.recv(4096)):
                    pass
                closed += 1
            except socket.timeout:
                break
            except OSError:
                closed += 1
        answer = f"{closed}/{count} closed by the server; meanwhile served: {why}"
        return answer, closed == count and meanwhile
    finally:
        for s in conns:
            s.close()


# ------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/queue-server")
    ap.add_argument("--quick", action="store_true", help="smaller ring-growth rounds (50,000)")
    ap.add_argument("--only", default="", help="comma-separated row ids, e.g. 1,2b,p6")
    ap.add_argument("--budget", type=int, default=300, help="watchdog: seconds for the whole run")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"abuse.py: no executable {args.bin} (cargo build --release)")

    atexit.register(kill_all)

    def on_signal(signo, _frame):
        raise SystemExit(f"abuse.py: signal {signo}, stopping")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_alarm(_signo, _frame):
        raise Timeout(f"watchdog: the run took more than {args.budget} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.budget)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    work = tempfile.mkdtemp(prefix="qs-abuse-")
    per_round = 50_000 if args.quick else 200_000
    only = {r.strip() for r in args.only.split(",") if r.strip()}

    base = (
        "[server]\nlogin_timeout_secs = 2\n"
        '[[queues.list]]\nname = "default"\n[[queues.list]]\nname = "stale"\n'
    )
    jwt = (
        "[server]\nmax_frame_bytes = 65536\nmax_login_frame_bytes = 65536\n"
        "max_outbound_bytes = 262144\n"
        f'[auth]\nmode = "jwt"\nalg = "HS256"\nkey = "{SECRET.decode()}"\n'
    )
    deadlock = "[server]\n[core]\nloop_channel_capacity = 16\n"
    expiry = "[server]\n[queues]\nauto_create = true\nmax_queues = 4\nauto_expire_secs = 1\n"
    durable = (
        f'[server]\ndrain_timeout_secs = 60\n[tokens]\nkey = "{TOKENS_KEY}"\n'
        f'[durability]\ndir = "{os.path.join(work, "durable", "data")}"\n'
    )
    servers = {
        "main": Server("main", args.bin, work, base),
        "jwt": Server("jwt", args.bin, work, jwt, jwt=True),
        "deadlock": Server("deadlock", args.bin, work, deadlock),
        "expiry": Server("expiry", args.bin, work, expiry),
        "durable": Server("durable", args.bin, work, durable),
    }
    # (id, attack, server, function, checks other clients after it)
    plan = [
        ("1", "control: admit with Content-Length 5000, 1 byte, silence", "main", slow_body, True),
        ("1b", "control: GET /healthz Content-Length 5000, no body", "main", healthz_declared_body, True),
        ("2", "control: admit body of 64 KB nested brackets", "main", nested_admit_body, True),
        ("2b", "control: verify token, header 20,000 deep", "main", verify_deep_header, True),
        ("2c", "player: login ticket, header 20,000 deep (jwt)", "jwt", login_deep_ticket, True),
        ("3", "core: loop_channel_capacity 16, 300 logins, admit 300", "deadlock", core_deadlock, True),
        ("4", "control: rate 1e300, capacity 2^64-1", "main", bad_numbers, True),
        ("5", "core: join+leave behind a fixed head, paused", "main",
         lambda s: ring_growth(s, per_round), True),
        ("6", "stale leave after duplicate login", "main", stale_leave, True),
        ("7", "GET /readyz", "main", readyz, True),
        ("8", "auto-created queues expire (max_queues 4)", "expiry", auto_expire, True),
        ("9", "2nd SIGTERM during a stuck stop", "durable", second_sigterm, False),
        ("p1", "player: zero-length frame header", "main", bad_header(b"\0\0\0\0"), True),
        ("p2", "player: 4 GB declared frame length", "main", bad_header(b"\xff\xff\xff\xff"), True),
        ("p3", "player: HTTP request on the player port", "main",
         bad_header(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), True),
        ("p4", "player: 64 KB of [ after a valid header", "main", brackets_after_header, True),
        ("p5", "player: 4 KB of garbage bytes", "main", garbage, True),
        ("p6", "player: never reads while pushed to", "main", slow_consumer, True),
        ("p7", "player: 1,000 connections, no login", "main", no_login, True),
    ]
    rows = []
    failed = False
    t_start = now()
    try:
        for rid, attack, sname, fn, check_after in plan:
            if only and rid not in only:
                continue
            srv = servers[sname]
            note = ""
            try:
                if srv.proc is None:
                    why = srv.start()
                    if why:
                        ok = False
                        answer = f"NOT TESTABLE: server does not start: {why}"
                        rows.append((rid, attack, answer, "-", "-", ok))
                        failed = True
                        continue
                else:
                    note = srv.ensure()
                answer, ok = fn(srv)
            except Timeout:
                raise
            except Exception as e:  # a broken attack is a failed row, not a dead run
                answer, ok = f"error: {type(e).__name__}: {short(e, 60)}", False
            if note:
                answer = f"[{note}] {answer}"
            if check_after:
                alive = srv.alive()
                serve_ok, serve_why = served(srv) if alive else (False, "-")
                if not serve_ok and alive:
                    # A process that aborts takes a moment to go: do not call it alive
                    # (and run the next attack on it) while it is dying.
                    try:
                        srv.proc.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        pass
                alive = alive and srv.alive()
                if not alive:
                    srv.proc.wait(timeout=5)
                    srv.note_death()
            else:
                alive, serve_ok, serve_why = None, None, "n/a"
            row_ok = ok and alive is not False and serve_ok is not False
            rows.append(
                (rid, attack, answer,
                 "n/a (exits)" if alive is None else ("yes" if alive else "NO (died)"),
                 serve_why, row_ok)
            )
            failed |= not row_ok
            print(f"  row {rid}: {'ok' if row_ok else 'FAIL'} ({now() - t_start:.0f}s)", file=sys.stderr, flush=True)
            if sname in ("jwt", "deadlock", "expiry") and srv.proc is not None:
                srv.kill()
    except Timeout as e:
        rows.append(("!", "watchdog", str(e), "-", "-", False))
        failed = True
    finally:
        signal.alarm(0)
        kill_all()

    print_table(rows)
    for s in servers.values():
        for c in s.crashes:
            print(f"server {s.name} died: {short(c, 200)}")
    print(f"{sum(r[5] for r in rows)}/{len(rows)} rows as expected, {now() - t_start:.0f} s; logs in {work}")
    return 1 if failed else 0


def print_table(rows):
    head = ("row", "attack", "answer", "server alive", "other clients served", "ok")
    cells = [head] + [
        (r[0], r[1], r[2], r[3], short(r[4], 40), "ok" if r[5] else "FAIL") for r in rows
    ]
    widths = [min(max(len(str(c[i])) for c in cells), 110) for i in range(len(head))]
    for n, c in enumerate(cells):
        print(" | ".join(short(str(v), widths[i]).ljust(widths[i]) for i, v in enumerate(c)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


if __name__ == "__main__":
    sys.exit(main())

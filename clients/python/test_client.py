#!/usr/bin/env python3
"""Checks queue_client.py against a real queue-server and against fake servers.

    python3 test_client.py --addr HOST:PORT --control HOST:PORT

The server must run with ``idle_timeout_secs = 2``, ``[queues] auto_create = true`` and
a short ``push_interval_ms`` (tests/reference_clients.rs starts it so). Every check
waits for events with a deadline, never for a fixed time. Prints one line per check;
exit 0 when all pass, 1 on the first failure.
"""

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import queue_client  # noqa: E402
from queue_client import QueueClient  # noqa: E402

WAIT = 15.0  # longest any single wait may take before the check fails


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


# -- a client whose events are recorded ------------------------------------------------


class Recorder:
    """A QueueClient on its own thread; records its events; catches anything it raises."""

    def __init__(self, addr, user_id, queue, **kw):
        self.events = []
        self.cond = threading.Condition()
        self.crash = None
        self.client = QueueClient(addr, user_id, queue, on_event=self._on, **kw)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on(self, ev):
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def _run(self):
        try:
            self.client.run()
        except BaseException:  # the check: a client must never raise
            self.crash = traceback.format_exc()
        with self.cond:
            self.cond.notify_all()

    def tail(self):
        """The last events, for failure messages (a client in a loop makes thousands)."""
        return "... %r" % (self.events[-12:],) if len(self.events) > 12 else repr(self.events)

    def of(self, kind):
        with self.cond:
            return [e for e in self.events if e.kind == kind]

    def wait(self, pred, what):
        """The first event for which ``pred`` holds, waiting for it."""
        deadline = time.monotonic() + WAIT
        with self.cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                check(left > 0 and self.thread.is_alive(), "no event %s; got %s" % (what, self.tail()))
                self.cond.wait(left)

    def outcome(self):
        self.thread.join(WAIT)
        check(not self.thread.is_alive(), "client still running; events %s" % (self.tail(),))
        check(self.crash is None, "client raised:\n%s" % (self.crash,))
        return self.client.outcome


def joined(resumed=None, position=None):
    def pred(e):
        return (
            e.kind == "joined"
            and (resumed is None or e.resumed == resumed)
            and (position is None or e.position == position)
        )

    return pred


# -- the control port ------------------------------------------------------------------


def http(control, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://%s%s" % (control, path), data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=WAIT) as resp:
        return json.loads(resp.read().decode())


def wait_waiting(control, queue, n):
    deadline = time.monotonic() + WAIT
    while True:
        q = http(control, "GET", "/v1/stats")["queues"].get(queue, {})
        if q.get("waiting") == n:
            return
        check(time.monotonic() < deadline, "queue %s never had %d waiting: %r" % (queue, n, q))
        time.sleep(0.01)


# -- a TCP proxy that can cut its connections (the network drops) ----------------------


class Proxy:
    def __init__(self, upstream):
        self.upstream = queue_client.parse_addr(upstream)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.socks = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self.lock:
                self.socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Drops every connection through the proxy (new ones still go through)."""
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.cut()
        self.listener.close()


# -- a fake server speaking frames, scripted per connection ----------------------------


def frame(obj):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def ok(cmd, seq, data):
    return frame({"cmd": cmd, "seq": seq, "code": 0, "msg": "ok", "data": data})


def push(cmd, data):
    return ok(cmd, 0, data)


WAITING = {"state": "waiting", "position": 3, "queue_len": 3, "eta_secs": None, "resumed": False}


class FakeConn:
    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.buf = b""

    def read_frame(self):
        """The client's next frame, or None at EOF."""
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return json.loads(body)
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self.buf += data

    def login(self):
        f = self.read_frame()
        check(f is not None and f["cmd"] == "login", "expected login, got %r" % (f,))
        return f["seq"]

    def send(self, data):
        self.sock.sendall(data)

    def until_closed(self):
        """Reads until the client closes (answering heartbeats)."""
        while True:
            f = self.read_frame()
            if f is None:
                return
            if f["cmd"] == "heartbeat":
                self.send(ok("heartbeat", f["seq"], {"ts": None, "server_ms": 0}))


class FakeServer:
    """Runs ``script(index, conn)`` for each accepted connection, then closes it."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.accepted = []  # monotonic time of each accept
        self.closed = []  # monotonic time each script ended and closed its connection
        self.errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            i = len(self.accepted) - 1
            threading.Thread(target=self._serve, args=(i, sock), daemon=True).start()

    def _serve(self, i, sock):
        try:
            self.script(i, FakeConn(sock))
        except Exception:
            self.errors.append(traceback.format_exc())
        finally:
            self.closed.append(time.monotonic())
            sock.close()

    def close(self):
        self.listener.close()
        check(not self.errors, "fake server script failed:\n%s" % ("\n".join(self.errors),))


# -- the checks against the real server ------------------------------------------------

FAST = {"heartbeat_secs": 0.2, "answer_timeout_secs": 5, "backoff_initial_secs": 0.05}


def real_resume_after_drop(addr, control):
    proxy = Proxy(addr)
    first = Recorder(addr, 100, "drop", **FAST)
    first.wait(joined(position=1), "first joined at 1")
    c = Recorder(proxy.addr, 101, "drop", **FAST)
    c.wait(joined(resumed=False, position=2), "joined at 2")
    proxy.cut()
    e = c.wait(joined(resumed=True), "joined again, resumed")
    check(e.position == 2, "resumed at %d, not 2" % e.position)
    check(len(c.of("connecting")) == 2, "connections: %s" % (c.tail(),))
    check(c.of("reconnecting"), "no reconnecting event")
    for r in (c, first):
        r.client.leave()
        check(r.outcome().kind == "left", "outcome %r" % (r.client.outcome,))
    proxy.close()


def real_resume_after_idle_kick(addr, control):
    # Heartbeats far apart: the server (idle_timeout_secs = 2) kicks, the client resumes.
    c = Recorder(addr, 200, "idle", heartbeat_secs=30, backoff_initial_secs=0.05)
    c.wait(joined(resumed=False), "joined")
    c.wait(lambda e: e.kind == "kicked" and e.reason == "idle_timeout", "kicked idle_timeout")
    c.wait(joined(resumed=True, position=1), "joined again, resumed")
    c.client.leave()
    check(c.outcome().kind == "left", "outcome %r" % (c.client.outcome,))


def real_heartbeat_keeps_alive(addr, control):
    c = Recorder(addr, 300, "alive", **FAST)
    c.wait(joined(), "joined")
    # 15 answered heartbeats 0.2 s apart span well over idle_timeout_secs = 2.
    c.wait(lambda e: len(c.of("heartbeat")) >= 15, "15 heartbeats")
    check(not c.of("kicked"), "kicked: %r" % (c.of("kicked"),))
    check(len(c.of("connecting")) == 1, "reconnected: %s" % (c.tail(),))
    c.client.leave()
    check(c.outcome().kind == "left", "outcome %r" % (c.client.outcome,))


def real_duplicate_login_stops_older(addr, control):
    older = Recorder(addr, 400, "dup", **FAST)
    older.wait(joined(resumed=False), "older joined")
    newer = Recorder(addr, 400, "dup", **FAST)
    newer.wait(joined(resumed=True, position=1), "newer joined, resumed")
    out = older.outcome()  # run() returned: the older client will not come back
    check(out.kind == "kicked" and out.reason == "duplicate_login", "older: %r" % (out,))
    check(len(older.of("connecting")) == 1, "older reconnected: %s" % (older.tail(),))
    newer.client.leave()
    check(newer.outcome().kind == "left", "newer: %r" % (newer.client.outcome,))


def real_leave_gives_up_place(addr, control):
    c = Recorder(addr, 500, "leave", **FAST)
    c.wait(joined(), "joined")
    wait_waiting(control, "leave", 1)
    c.client.leave()
    check(c.outcome().kind == "left", "outcome %r" % (c.client.outcome,))
    wait_waiting(control, "leave", 0)
    check(len(c.of("connecting")) == 1, "reconnected after leave: %s" % (c.tail(),))


def real_admitted_token_verifies(addr, control):
    c = Recorder(addr, 600, "adm", **FAST)
    c.wait(joined(), "joined")
    http(control, "POST", "/v1/queues/adm/admit", {"count": 1})
    out = c.outcome()
    check(out.kind == "admitted", "outcome %r" % (out,))
    v = http(control, "POST", "/v1/tokens/verify", {"token": out.token})
    check(v.get("valid") is True and v.get("user_id") == 600, "verify: %r" % (v,))


# -- the checks against fake servers ---------------------------------------------------


def fake_shutting_down_is_waited_out(addr, control):
    def script(i, conn):
        seq = conn.login()
        if i == 0:
            conn.send(frame({"cmd": "login", "seq": seq, "code": 9, "msg": "shutting down", "data": {"retry_after_secs": 1}}))
        elif i == 1:
            conn.send(ok("login", seq, WAITING))
            conn.send(push("kicked", {"reason": "shutdown", "retry_after_secs": 1}))
        else:
            conn.send(ok("login", seq, dict(WAITING, resumed=True)))
            conn.send(push("admitted", {"token": "tok-1", "expires_at": 1, "login_addr": "10.0.0.1:9000"}))
            conn.until_closed()

    fake = FakeServer(script)
    c = Recorder(fake.addr, 1, "q", heartbeat_secs=5, backoff_initial_secs=0.01)
    out = c.outcome()
    check(out.kind == "admitted" and out.token == "tok-1", "outcome %r" % (out,))
    check(out.login_addr == "10.0.0.1:9000", "login_addr %r" % (out.login_addr,))
    check(len(fake.accepted) == 3, "connections: %d" % len(fake.accepted))
    for i in (1, 2):
        # The client came back no sooner than retry_after_secs after the server closed.
        gap = fake.accepted[i] - fake.closed[i - 1]
        check(gap >= 1.0, "came back after %.3f s, retry_after_secs was 1" % gap)
    check(c.wait(joined(resumed=True), "resumed").position == 3, "resumed position")
    fake.close()


def fake_place_ticket_is_presented(addr, control):
    # A cluster's login answer carries a place_ticket: the client presents the latest
    # one at its next login, and forgets one the server rejects (then retries at once).
    seen = []

    def script(i, conn):
        f = conn.read_frame()
        check(f is not None and f["cmd"] == "login", "expected login, got %r" % (f,))
        seen.append(f["data"].get("place_ticket"))
        seq = f["seq"]
        if i == 0:
            conn.send(ok("login", seq, dict(WAITING, place_ticket="T1")))
        elif i == 1:
            conn.send(ok("login", seq, dict(WAITING, resumed=True, place_ticket="T2")))
        elif i == 2:
            msg = "place ticket rejected: bad signature"
            conn.send(frame({"cmd": "login", "seq": seq, "code": 4, "msg": msg, "data": {}}))
        else:
            conn.send(ok("login", seq, dict(WAITING, place_ticket="T3")))
            conn.send(push("admitted", {"token": "tok-3", "expires_at": 1, "login_addr": None}))
            conn.until_closed()

    fake = FakeServer(script)
    c = Recorder(fake.addr, 1, "q", heartbeat_secs=5, backoff_initial_secs=0.01)
    out = c.outcome()
    check(out.kind == "admitted" and out.token == "tok-3", "outcome %r" % (out,))
    check(seen == [None, "T1", "T2", None], "presented %r" % (seen,))
    fake.close()


def fake_rate_limited_then_admitted(addr, control):
    def script(i, conn):
        if i == 0:  # a connection over the limit: one frame with cmd "" and close
            conn.send(frame({"cmd": "", "seq": 0, "code": 8, "msg": "too many connections", "data": {}}))
            return
        seq = conn.login()
        conn.send(ok("login", seq, WAITING))
        conn.send(push("admitted", {"token": "tok-2", "expires_at": 1, "login_addr": None}))
        conn.until_closed()

    fake = FakeServer(script)
    c = Recorder(fake.addr, 1, "q", heartbeat_secs=5, backoff_initial_secs=0.01)
    out = c.outcome()
    check(out.kind == "admitted" and out.token == "tok-2", "outcome %r" % (out,))
    fake.close()


def fake_final_answers_are_final(addr, control):
    cases = [
        ("kicked duplicate_login", push("kicked", {"reason": "duplicate_login"}), "kicked"),
        ("kicked removed", push("kicked", {"reason": "removed"}), "kicked"),
        ("AUTH_FAILED", None, "refused"),
        ("QUEUE_FULL", None, "refused"),
    ]
    for name, kick, kind in cases:

        def script(i, conn, kick=kick, name=name):
            seq = conn.login()
            if kick is None:
                code = 4 if name == "AUTH_FAILED" else 5
                conn.send(frame({"cmd": "login", "seq": seq, "code": code, "msg": name, "data": {}}))
            else:
                conn.send(ok("login", seq, WAITING))
                conn.send(kick)
            conn.until_closed()

        fake = FakeServer(script)
        c = Recorder(fake.addr, 1, "q", heartbeat_secs=5, backoff_initial_secs=0.01)
        out = c.outcome()
        check(out.kind == kind, "%s: outcome %r" % (name, out))
        check(len(fake.accepted) == 1, "%s: reconnected" % name)
        fake.close()


def fake_split_and_batched_frames(addr, control):
    def script(i, conn):
        seq = conn.login()
        for b in ok("login", seq, WAITING):  # one byte per write
            conn.send(bytes([b]))
        conn.send(
            push("position", {"position": 2, "queue_len": 2, "eta_secs": 4})
            + push("unknown_push", {"x": 1})
            + push("admitted", {"token": "tok-3", "expires_at": 1, "login_addr": None})
        )
        conn.until_closed()

    fake = FakeServer(script)
    c = Recorder(fake.addr, 1, "q", heartbeat_secs=5)
    out = c.outcome()
    check(out.kind == "admitted" and out.token == "tok-3", "outcome %r" % (out,))
    p = c.of("position")
    check(len(p) == 1 and p[0].position == 2 and p[0].eta_secs == 4, "positions %r" % (p,))
    fake.close()


def fake_garbage_gives_clean_errors(addr, control):
    rng = random.Random(9)
    after_login = [
        ("length over the limit", b"\xff\xff\xff\xff", "over the limit"),
        ("length just over 1 MiB", struct.pack(">I", (1 << 20) + 1), "over the limit"),
        ("zero length", b"\x00\x00\x00\x00", "length 0"),
        ("not JSON", frame(b"hello"), "not UTF-8 JSON"),
        ("not an object", frame(b"[1,2]"), "not a JSON object"),
        ("bad UTF-8", frame(b'{"cmd":"\xff"}'), "not UTF-8"),
        ("deep nesting", frame(b"[" * 200000), "not UTF-8 JSON"),
        ("ill-typed code", frame(b'{"cmd":"login","seq":1,"code":"0"}'), "ill-typed"),
        ("bool seq", frame(b'{"cmd":"login","seq":true,"code":0}'), "ill-typed"),
        ("data not an object", frame(b'{"cmd":"login","seq":1,"code":0,"data":[]}'), "ill-typed"),
        ("wrong seq", ok("login", 999, WAITING), "expected"),
        ("ill-typed login answer", ok("login", 1, {"position": "x", "queue_len": 1}), "ill-typed"),
        ("ill-typed push", push("position", {"position": -1, "queue_len": 1}), "ill-typed"),
        ("ill-typed admitted", push("admitted", {"token": 5, "expires_at": 1}), "ill-typed"),
        ("ill-typed kicked", push("kicked", {"reason": None}), "ill-typed"),
        ("random bytes", bytes(rng.randrange(256) for _ in range(4096)), ""),
        ("silence", b"", "no answer"),
        ("close", None, "closed"),
    ]
    for name, garbage, expect in after_login:

        def script(i, conn, garbage=garbage):
            conn.login()
            if garbage is None:
                return
            conn.send(garbage)
            conn.until_closed()  # the client must be the one to hang up

        fake = FakeServer(script)
        # give_up_secs = 0: no reconnect, so the first failure is the outcome. Only the
        # silent server waits for the answer deadline; the others must fail before it.
        timeout = 0.3 if name == "silence" else 10
        c = Recorder(fake.addr, 1, "q", heartbeat_secs=5, answer_timeout_secs=timeout, give_up_secs=0)
        out = c.outcome()
        check(out.kind == "gave_up", "%s: outcome %r" % (name, out))
        check(expect in out.error, "%s: error %r lacks %r" % (name, out.error, expect))
        check(c.of("error"), "%s: no error event" % name)
        fake.close()
    # The decoder alone, fed random chunks: only ProtocolError, never anything else.
    for _ in range(2000):
        d = queue_client.FrameDecoder(64)
        try:
            for _ in range(4):
                d.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(12))))
                d.feed(frame(bytes(rng.choice(b'{}[]"a:1,\\u') for _ in range(rng.randrange(8)))))
        except queue_client.ProtocolError:
            pass


def fake_answer_timeout_reconnects(addr, control):
    # The first server never answers the heartbeat: the client takes it for dead and
    # reconnects; the second admits it.
    def script(i, conn):
        seq = conn.login()
        conn.send(ok("login", seq, WAITING))
        if i == 0:
            while conn.read_frame() is not None:
                pass  # swallows heartbeats, answers nothing
            return
        conn.send(push("admitted", {"token": "tok-4", "expires_at": 1, "login_addr": None}))
        conn.until_closed()

    fake = FakeServer(script)
    c = Recorder(fake.addr, 1, "q", heartbeat_secs=0.1, answer_timeout_secs=1, backoff_initial_secs=0.01)
    out = c.outcome()
    check(out.kind == "admitted" and out.token == "tok-4", "outcome %r" % (out,))
    check(any("no answer to heartbeat" in e.error for e in c.of("error")), "errors %r" % (c.of("error"),))
    fake.close()


CHECKS = [
    real_resume_after_drop,
    real_resume_after_idle_kick,
    real_heartbeat_keeps_alive,
    real_duplicate_login_stops_older,
    real_leave_gives_up_place,
    real_admitted_token_verifies,
    fake_shutting_down_is_waited_out,
    fake_place_ticket_is_presented,
    fake_rate_limited_then_admitted,
    fake_final_answers_are_final,
    fake_split_and_batched_frames,
    fake_garbage_gives_clean_errors,
    fake_answer_timeout_reconnects,
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True, help="player port of a real server")
    p.add_argument("--control", required=True, help="its control port")
    p.add_argument("--only", default="", help="run only checks whose name contains this")
    args = p.parse_args()
    for c in CHECKS:
        if args.only not in c.__name__:
            continue
        start = time.monotonic()
        try:
            c(args.addr, args.control)
        except Exception:
            print("FAIL %s\n%s" % (c.__name__, traceback.format_exc()), flush=True)
            return 1
        print("ok   %s (%.2f s)" % (c.__name__, time.monotonic() - start), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

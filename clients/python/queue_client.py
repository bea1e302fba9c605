"""Reference client for queue-server's player port (wire protocol version 1).

Standard library only, Python 3.8+, one file: copy it into your game, launcher, bot or
tool. It implements the whole client side of the protocol (docs/protocol.md, and the
reconnect rules in clients/README.md):

- framing: a 4-byte big-endian length, then a UTF-8 JSON object; frames over
  ``max_frame_bytes`` (default 1 MiB), empty frames, bad UTF-8, bad JSON and ill-typed
  fields are refused as a ``ProtocolError`` (the connection is dropped, never a crash);
- ``login`` with ``user_id``, ``queue`` and an optional ``ticket`` (a string, or a
  callable returning a fresh one for every login); against a cluster, the
  ``place_ticket`` of the latest login answer is presented at every later login, so
  the place comes back on any node even if the one holding it died;
- a ``heartbeat`` every ``heartbeat_secs`` (default 10); every request must be answered
  within ``answer_timeout_secs``, otherwise the server is taken for dead;
- ``position``, ``admitted`` and ``kicked`` pushes as events;
- reconnect with exponential backoff and jitter, resuming the place within the server's
  ``reconnect_grace_secs`` (the ``joined`` event then says ``resumed=True``);
- ``SHUTTING_DOWN`` (code 9) and ``kicked`` ``shutdown``: come back after
  ``retry_after_secs``; never reconnect after ``kicked`` ``duplicate_login`` or
  ``removed``, after a refusal, after ``admitted`` or after ``leave()``.

Use::

    from queue_client import QueueClient

    def on_event(ev):
        if ev.kind in ("joined", "position"):
            print("position", ev.position, "of", ev.queue_len)

    client = QueueClient("127.0.0.1:7000", user_id=42, queue="default", on_event=on_event)
    outcome = client.run()          # blocks; or client.start() + client.join()
    if outcome.kind == "admitted":
        hand_to_login_server(outcome.token)

``run()`` returns an ``Outcome`` whose ``kind`` is one of ``admitted`` (``token``,
``expires_at``, ``login_addr``), ``refused`` (``code``, ``name``, ``msg``), ``kicked``
(``reason``), ``left`` or ``gave_up`` (``error``). Events passed to ``on_event`` (called
on the client's thread) have a ``kind``: ``connecting`` (``attempt``), ``joined``
(``state``, ``position``, ``queue_len``, ``eta_secs``, ``resumed``), ``position``
(``position``, ``queue_len``, ``eta_secs``), ``admitted`` (``token``, ``expires_at``,
``login_addr``), ``kicked`` (``reason``, ``retry_after_secs``), ``reconnecting``
(``attempt``, ``delay_secs``, ``reason``), ``heartbeat`` (``rtt_ms``) and ``error``
(``error``: a dropped connection or a protocol error; the client carries on).
"""

import json
import random
import select
import socket
import struct
import threading
import time

PROTOCOL_VERSION = 1
#: Largest frame body accepted from the server, in bytes (the server's own frames are a
#: few hundred bytes; the bound keeps a broken or hostile peer from making us buffer).
FRAME_BYTES_MAX = 1 << 20

CODE_NAMES = {
    0: "OK",
    1: "BAD_FRAME",
    2: "UNSUPPORTED",
    3: "NOT_LOGGED_IN",
    4: "AUTH_FAILED",
    5: "QUEUE_FULL",
    6: "UNKNOWN_QUEUE",
    7: "ALREADY_LOGGED_IN",
    8: "RATE_LIMITED",
    9: "SHUTTING_DOWN",
    10: "INTERNAL",
}
#: Login answers worth retrying (with backoff, or after ``retry_after_secs`` for 9).
RETRY_CODES = (8, 9, 10)
#: Kick reasons after which the client must not come back by itself.
FINAL_KICKS = ("duplicate_login", "removed")


class ProtocolError(Exception):
    """The server sent bytes that are not a valid frame of this protocol."""


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def encode_frame(obj):
    """One frame: 4-byte big-endian length, then the JSON body."""
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return struct.pack(">I", len(body)) + body


def decode_body(body):
    """Parses one frame body into a dict with ``cmd``, ``seq``, ``code``, ``msg``, ``data``."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError("frame body is not UTF-8 JSON: %s" % (str(e)[:80],))
    if not isinstance(value, dict):
        raise ProtocolError("frame body is not a JSON object")
    cmd = value.get("cmd")
    seq = value.get("seq", 0)
    code = value.get("code", 0)
    msg = value.get("msg", "")
    data = value.get("data")
    if data is None:
        data = {}
    if not isinstance(cmd, str) or not _is_uint(seq) or not _is_uint(code):
        raise ProtocolError("frame has an ill-typed cmd, seq or code")
    if not isinstance(msg, str) or not isinstance(data, dict):
        raise ProtocolError("frame has an ill-typed msg or data")
    return {"cmd": cmd, "seq": seq, "code": code, "msg": msg, "data": data}


class FrameDecoder:
    """Bytes in, frames out. Refuses a length over the limit from the header alone."""

    def __init__(self, max_frame_bytes=FRAME_BYTES_MAX):
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data):
        """Adds received bytes; returns the complete frames, parsed. Raises ProtocolError."""
        self._buf += data
        frames = []
        while len(self._buf) >= 4:
            (n,) = struct.unpack_from(">I", self._buf, 0)
            if n == 0:
                raise ProtocolError("frame of length 0")
            if n > self._max:
                raise ProtocolError(
                    "frame of %d bytes is over the limit of %d" % (n, self._max)
                )
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4 : 4 + n])
            del self._buf[: 4 + n]
            frames.append(decode_body(body))
        return frames


class Event:
    """Something that happened; ``kind`` names it, the other attributes depend on it."""

    def __init__(self, kind, **fields):
        self.kind = kind
        self.__dict__.update(fields)

    def __repr__(self):
        fields = ", ".join(
            "%s=%r" % (k, v) for k, v in self.__dict__.items() if k != "kind"
        )
        return "%s(%s)" % (self.kind, fields)


class Outcome(Event):
    """How ``run()`` ended; ``kind`` is admitted, refused, kicked, left or gave_up."""


def parse_addr(addr):
    """``"host:port"``, ``"[v6]:port"`` or a ``(host, port)`` tuple -> ``(host, port)``."""
    if isinstance(addr, tuple):
        return addr
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("address must be HOST:PORT, got %r" % (addr,))
    return host.strip("[]"), int(port)


def backoff_delay(attempt, initial_secs, max_secs, rng=random):
    """Exponential backoff with jitter: a random time in [d/2, d], d = initial * 2^attempt, capped."""
    d = min(max_secs, initial_secs * (2 ** min(attempt, 30)))
    return rng.uniform(d / 2, d)


class _Retry:
    """One connection ended and the client should come back."""

    def __init__(self, reason, retry_after_secs=None):
        self.reason = reason
        self.retry_after_secs = retry_after_secs


class QueueClient:
    """One player waiting in one queue. Not reusable: make a new one to join again."""

    def __init__(
        self,
        addr,
        user_id,
        queue="default",
        ticket=None,
        on_event=None,
        heartbeat_secs=10.0,
        answer_timeout_secs=10.0,
        connect_timeout_secs=10.0,
        backoff_initial_secs=0.5,
        backoff_max_secs=15.0,
        give_up_secs=120.0,
        max_frame_bytes=FRAME_BYTES_MAX,
        rng=None,
    ):
        if not _is_uint(user_id) or user_id >= 1 << 64:
            raise ValueError("user_id must be an unsigned 64-bit integer")
        self.addr = parse_addr(addr)
        self.user_id = user_id
        self.queue = queue
        self.ticket = ticket
        self.on_event = on_event
        self.heartbeat_secs = heartbeat_secs
        self.answer_timeout_secs = answer_timeout_secs
        self.connect_timeout_secs = connect_timeout_secs
        self.backoff_initial_secs = backoff_initial_secs
        self.backoff_max_secs = backoff_max_secs
        #: Seconds without a successful login after which ``run()`` gives up (None: never;
        #: 0: no reconnect at all). The server keeps a lost place ``reconnect_grace_secs``.
        self.give_up_secs = give_up_secs
        self.max_frame_bytes = max_frame_bytes
        self.rng = rng or random.Random()
        self.outcome = None
        # A cluster's place ticket from the latest login answer: presented at every
        # later login (the place comes back on any node, even if the one holding it
        # died); forgotten once admitted, or when the server rejects it.
        self._place_ticket = None
        self._seq = 0
        self._leave = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = None

    # -- public ---------------------------------------------------------------

    def start(self):
        """Runs ``run()`` on a daemon thread; ``join()`` waits for its outcome."""
        self._thread = threading.Thread(target=self.run, name="queue-client", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout=None):
        """The outcome once ``run()`` ended (None if still running after ``timeout``)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.outcome

    def leave(self):
        """Gives the place up (the server is told when connected) and stops; thread-safe."""
        self._leave.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self):
        """Waits in the queue until admitted, refused, kicked for good, left or given up."""
        try:
            return self._run()
        finally:
            for s in (self._wake_r, self._wake_w):
                s.close()

    # -- the reconnect loop ---------------------------------------------------

    def _emit(self, kind, **fields):
        if self.on_event is not None:
            self.on_event(Event(kind, **fields))

    def _finish(self, kind, **fields):
        self.outcome = Outcome(kind, **fields)
        return self.outcome

    def _run(self):
        attempt = 0  # failed attempts since the last successful login
        since = time.monotonic()  # start, or end of the last logged-in connection
        connects = 0
        while True:
            if self._leave.is_set():
                return self._finish("left")
            connects += 1
            self._emit("connecting", attempt=connects)
            step, logged_in = self._connection()
            if not isinstance(step, _Retry):
                return step
            now = time.monotonic()
            if logged_in:
                attempt, since = 0, now
            if self.give_up_secs is not None and now - since >= self.give_up_secs:
                return self._finish("gave_up", error=step.reason)
            if step.retry_after_secs is not None:
                # The server said when to come back; a little jitter spreads the crowd.
                delay = step.retry_after_secs + self.rng.uniform(
                    0, min(1.0, step.retry_after_secs / 10)
                )
            else:
                delay = backoff_delay(
                    attempt, self.backoff_initial_secs, self.backoff_max_secs, self.rng
                )
                attempt += 1
            self._emit("reconnecting", attempt=connects, delay_secs=delay, reason=step.reason)
            if self._sleep(delay):
                return self._finish("left")

    def _sleep(self, secs):
        """Waits ``secs`` (never less); True when ``leave()`` cut it short."""
        deadline = time.monotonic() + secs
        while not self._leave.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self._wake_r], [], [], left)
            self._drain_wake()
        return True

    def _drain_wake(self):
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _next_seq(self):
        # Never 0: an answer with seq 0 would look like a push.
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    # -- one connection -------------------------------------------------------

    def _connection(self):
        """One connection: (Outcome or _Retry, whether a login succeeded on it)."""
        try:
            sock = socket.create_connection(self.addr, timeout=self.connect_timeout_secs)
        except OSError as e:
            self._emit("error", error="connect: %s" % (e,))
            return _Retry("connect: %s" % (e,)), False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Writes are a few hundred bytes; a peer that will not take them is dead.
            sock.settimeout(self.answer_timeout_secs)
            return self._session(sock)
        finally:
            sock.close()

    def _session(self, sock):
        state = {"logged_in": False}
        decoder = FrameDecoder(self.max_frame_bytes)
        pending = []  # [seq, cmd, deadline, sent_at] in send order
        leave_sent = False
        next_heartbeat = None

        def send(cmd, data):
            seq = self._next_seq()
            now = time.monotonic()
            sock.sendall(encode_frame({"cmd": cmd, "seq": seq, "data": data}))
            pending.append([seq, cmd, now + self.answer_timeout_secs, now])

        def retry(reason, retry_after_secs=None):
            return _Retry(reason, retry_after_secs), state["logged_in"]

        def done(kind, **fields):
            return self._finish(kind, **fields), state["logged_in"]

        data = {"user_id": self.user_id, "queue": self.queue}
        ticket = self.ticket() if callable(self.ticket) else self.ticket
        if ticket is not None:
            data["ticket"] = ticket
        if self._place_ticket is not None:
            data["place_ticket"] = self._place_ticket
        try:
            send("login", data)
            while True:
                now = time.monotonic()
                if self._leave.is_set() and not leave_sent:
                    send("leave", {})
                    leave_sent = True
                if pending and pending[0][2] <= now:
                    reason = "no answer to %s within %ss" % (
                        pending[0][1],
                        self.answer_timeout_secs,
                    )
                    if leave_sent:
                        return done("left")
                    self._emit("error", error=reason)
                    return retry(reason)
                if next_heartbeat is not None and now >= next_heartbeat:
                    send("heartbeat", {"ts": int(time.time() * 1000)})
                    next_heartbeat = now + self.heartbeat_secs
                wake = [
                    d
                    for d in (pending[0][2] if pending else None, next_heartbeat)
                    if d is not None
                ]
                timeout = max(0.0, min(wake) - now) if wake else None
                readable, _, _ = select.select([sock, self._wake_r], [], [], timeout)
                if self._wake_r in readable:
                    self._drain_wake()
                if sock not in readable:
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    if leave_sent:
                        return done("left")
                    self._emit("error", error="connection closed by the server")
                    return retry("connection closed by the server")
                try:
                    frames = decoder.feed(chunk)
                except ProtocolError as e:
                    self._emit("error", error="protocol error: %s" % (e,))
                    return retry("protocol error: %s" % (e,))
                for f in frames:
                    result = self._frame(f, pending, state, retry, done)
                    if result is not None:
                        if leave_sent and isinstance(result[0], _Retry):
                            return done("left")
                        return result
                    if state["logged_in"] and next_heartbeat is None:
                        next_heartbeat = time.monotonic() + self.heartbeat_secs
        except OSError as e:
            if leave_sent:
                return done("left")
            self._emit("error", error="connection lost: %s" % (e,))
            return retry("connection lost: %s" % (e,))

    def _frame(self, f, pending, state, retry, done):
        """Handles one frame; returns a result to end the connection, or None."""
        cmd, seq, code, data = f["cmd"], f["seq"], f["code"], f["data"]
        if seq == 0 and code == 0:
            return self._push(cmd, data, retry, done)
        # An answer: to the oldest request (the server answers in order), or, with seq 0
        # and cmd "", a refusal of the connection or of a frame it could not parse.
        if not pending:
            return self._protocol_error("answer to no request: %s %s" % (cmd, seq), retry)
        req_seq, req_cmd, _, sent_at = pending[0]
        if seq not in (0, req_seq):
            return self._protocol_error(
                "answer seq %d, expected %d" % (seq, req_seq), retry
            )
        pending.pop(0)
        name = CODE_NAMES.get(code, "code %d" % code)
        if req_cmd == "login":
            if code == 0:
                fields = self._position_fields(data)
                resumed = data.get("resumed", False)
                login_state = data.get("state", "waiting")
                if (
                    fields is None
                    or not isinstance(resumed, bool)
                    or not isinstance(login_state, str)
                ):
                    return self._protocol_error("ill-typed login answer", retry)
                state["logged_in"] = True
                ticket = data.get("place_ticket")
                if login_state == "admitted":
                    self._place_ticket = None
                elif isinstance(ticket, str):
                    self._place_ticket = ticket
                self._emit("joined", state=login_state, resumed=resumed, **fields)
                return None
            reason = "login refused: %s (%s)" % (name, f["msg"])
            if code == 4 and self._place_ticket is not None and str(f["msg"]).startswith(
                "place ticket rejected"
            ):
                # Refused for the place ticket alone (a cluster whose key changed):
                # forget it and log in again without it.
                self._place_ticket = None
                return retry(reason)
            if code == 9:
                after = data.get("retry_after_secs")
                return retry(reason, after if _is_uint(after) else None)
            if code in RETRY_CODES:
                return retry(reason)
            return done("refused", code=code, name=name, msg=f["msg"])
        if req_cmd == "leave":
            return done("left")
        if req_cmd == "heartbeat" and code == 0:
            self._emit("heartbeat", rtt_ms=int((time.monotonic() - sent_at) * 1000))
        # Other errors on an open session (2, 7, 10) leave it open; closing ones are
        # followed by the close, which brings the reconnect.
        return None

    def _protocol_error(self, what, retry):
        self._emit("error", error="protocol error: %s" % (what,))
        return retry("protocol error: %s" % (what,))

    @staticmethod
    def _position_fields(data):
        position, queue_len = data.get("position"), data.get("queue_len")
        eta = data.get("eta_secs")
        if not _is_uint(position) or not _is_uint(queue_len):
            return None
        if eta is not None and not _is_uint(eta):
            return None
        return {"position": position, "queue_len": queue_len, "eta_secs": eta}

    def _push(self, cmd, data, retry, done):
        if cmd == "position":
            fields = self._position_fields(data)
            if fields is None:
                return self._protocol_error("ill-typed position push", retry)
            self._emit("position", **fields)
            return None
        if cmd == "admitted":
            token, expires_at = data.get("token"), data.get("expires_at")
            login_addr = data.get("login_addr")
            if not isinstance(token, str) or not token or not _is_uint(expires_at):
                return self._protocol_error("ill-typed admitted push", retry)
            if login_addr is not None and not isinstance(login_addr, str):
                return self._protocol_error("ill-typed admitted push", retry)
            fields = {"token": token, "expires_at": expires_at, "login_addr": login_addr}
            self._emit("admitted", **fields)
            return done("admitted", **fields)
        if cmd == "kicked":
            reason = data.get("reason")
            after = data.get("retry_after_secs")
            if not isinstance(reason, str) or (after is not None and not _is_uint(after)):
                return self._protocol_error("ill-typed kicked push", retry)
            self._emit("kicked", reason=reason, retry_after_secs=after)
            if reason in FINAL_KICKS:
                return done("kicked", reason=reason)
            if reason == "shutdown" and after is not None:
                return retry("kicked: shutdown", after)
            return retry("kicked: %s" % (reason,))
        return None  # a push this client does not know: ignored (forward compatible)

'use strict';
/**
 * Reference client for queue-server's player port (wire protocol version 1).
 *
 * One file, no dependencies: Node's `net` module is used only by `nodeTransport()`, the
 * last part of this file. Everything else is plain ECMAScript 2017 (classes, Promise,
 * Uint8Array), so the same logic runs in a game engine's JS runtime: give `QueueClient`
 * your engine's socket as a `transport` (and its timers as a `clock`) and drop the Node
 * part. The layers, bottom up:
 *
 * - `FrameDecoder` / `encodeFrame`: a 4-byte big-endian length, then a UTF-8 JSON object.
 *   A length over `maxFrameBytes` (default 1 MiB) is refused from the header alone; empty
 *   frames, bad UTF-8, bad JSON and ill-typed fields throw `ProtocolError`.
 * - `Protocol`: the state of one connection, no I/O and no timers. `login()`, `heartbeat()`,
 *   `leave()` return the bytes to write; `receive(bytes)` returns typed events (`joined`,
 *   `position`, `admitted`, `kicked`, `refused`, `heartbeat`, `left`); `deadlineMs()` says
 *   when the oldest unanswered request times out.
 * - `QueueClient`: the policy. Reconnects with exponential backoff and jitter, resumes the
 *   place within the server's `reconnect_grace_secs` (`joined` with `resumed: true`),
 *   sends a heartbeat every `heartbeatMs` (default 10 s), takes the server for dead when
 *   an answer is late (`answerTimeoutMs`), waits out `SHUTTING_DOWN` (code 9) and
 *   `kicked` `shutdown` for `retry_after_secs`, and never comes back after `kicked`
 *   `duplicate_login` / `removed`, a refusal, `admitted` or `leave()`. Against a cluster,
 *   the `place_ticket` of the latest login answer is presented at every later login (the
 *   place comes back on any node, even if the one holding it died); it is forgotten once
 *   admitted, or when the server rejects it (then the login is tried again without it).
 *   The reconnect rules are written down in clients/README.md.
 * - `nodeTransport()`: the thin Node socket glue.
 *
 * Use (Node):
 *
 *   const { QueueClient } = require('./queue_client');
 *   const client = new QueueClient({ addr: '127.0.0.1:7000', userId: 42, queue: 'default' });
 *   client.on('position', (e) => console.log('position', e.position, 'of', e.queueLen));
 *   const outcome = await client.start();
 *   if (outcome.kind === 'admitted') useToken(outcome.token);
 *
 * `start()` resolves (never rejects) with an outcome whose `kind` is `admitted` (`token`,
 * `expiresAt`, `loginAddr`), `refused` (`code`, `name`, `msg`), `kicked` (`reason`),
 * `left` or `gave_up` (`error`). Events: `connecting` (`attempt`), `joined` (`state`,
 * `position`, `queueLen`, `etaSecs`, `resumed`), `position` (`position`, `queueLen`,
 * `etaSecs`), `admitted`, `kicked` (`reason`, `retryAfterSecs`), `reconnecting`
 * (`attempt`, `delayMs`, `reason`), `heartbeat` (`rttMs`), `error` (`error`: a lost
 * connection or a protocol error; the client carries on) and `done` (the outcome).
 */

const PROTOCOL_VERSION = 1;
/** Largest frame body accepted from the server, in bytes (its frames are a few hundred). */
const FRAME_BYTES_MAX = 1 << 20;
const CODE_NAMES = {
  0: 'OK', 1: 'BAD_FRAME', 2: 'UNSUPPORTED', 3: 'NOT_LOGGED_IN', 4: 'AUTH_FAILED',
  5: 'QUEUE_FULL', 6: 'UNKNOWN_QUEUE', 7: 'ALREADY_LOGGED_IN', 8: 'RATE_LIMITED',
  9: 'SHUTTING_DOWN', 10: 'INTERNAL',
};
/** Login answers worth retrying (with backoff, or after `retry_after_secs` for 9). */
const RETRY_CODES = [8, 9, 10];
/** Kick reasons after which the client must not come back by itself. */
const FINAL_KICKS = ['duplicate_login', 'removed'];
const U64_MAX = '18446744073709551615';

class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function isUint(v) {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

// ---- UTF-8 (TextEncoder/TextDecoder where the runtime has them) ------------------------

function utf8Encode(s) {
  if (typeof TextEncoder !== 'undefined') return new TextEncoder().encode(s);
  const out = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.codePointAt(i);
    if (c > 0xffff) i++;
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // lone surrogate
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}

/** Strict UTF-8 decoding: throws on any invalid sequence. */
function utf8Decode(bytes) {
  if (typeof TextDecoder !== 'undefined') {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch (e) {
      throw new ProtocolError('frame body is not UTF-8');
    }
  }
  let out = '';
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    let n = 0;
    let c = 0;
    let min = 0;
    if (b < 0x80) { c = b; n = 0; } else if ((b & 0xe0) === 0xc0) { c = b & 31; n = 1; min = 0x80; } else if ((b & 0xf0) === 0xe0) { c = b & 15; n = 2; min = 0x800; } else if ((b & 0xf8) === 0xf0) { c = b & 7; n = 3; min = 0x10000; } else throw new ProtocolError('frame body is not UTF-8');
    for (let k = 1; k <= n; k++) {
      const t = bytes[i + k];
      if (t === undefined || (t & 0xc0) !== 0x80) throw new ProtocolError('frame body is not UTF-8');
      c = (c << 6) | (t & 63);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) throw new ProtocolError('frame body is not UTF-8');
    out += String.fromCodePoint(c);
    i += n + 1;
  }
  return out;
}

// ---- framing ---------------------------------------------------------------------------

/** One frame around a JSON body given as a string. */
function encodeFrame(json) {
  const body = utf8Encode(json);
  const frame = new Uint8Array(4 + body.length);
  const n = body.length;
  frame[0] = (n >>> 24) & 255; frame[1] = (n >>> 16) & 255; frame[2] = (n >>> 8) & 255; frame[3] = n & 255;
  frame.set(body, 4);
  return frame;
}

/** Parses one frame body into `{cmd, seq, code, msg, data}`; throws ProtocolError. */
function parseBody(bytes) {
  let v;
  const text = utf8Decode(bytes);
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError('frame body is not JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolError('frame body is not a JSON object');
  const cmd = v.cmd;
  const seq = v.seq === undefined ? 0 : v.seq;
  const code = v.code === undefined ? 0 : v.code;
  const msg = v.msg === undefined ? '' : v.msg;
  const data = v.data === undefined || v.data === null ? {} : v.data;
  if (typeof cmd !== 'string' || !isUint(seq) || !isUint(code)) throw new ProtocolError('frame has an ill-typed cmd, seq or code');
  if (typeof msg !== 'string' || typeof data !== 'object' || Array.isArray(data)) throw new ProtocolError('frame has an ill-typed msg or data');
  return { cmd, seq, code, msg, data };
}

/** Bytes in, parsed frames out. */
class FrameDecoder {
  constructor(maxFrameBytes) {
    this.max = maxFrameBytes || FRAME_BYTES_MAX;
    this.buf = new Uint8Array(0);
  }

  /** Adds received bytes (a Uint8Array; a Node Buffer is one); returns whole frames. */
  push(bytes) {
    let buf = bytes;
    if (this.buf.length > 0) {
      buf = new Uint8Array(this.buf.length + bytes.length);
      buf.set(this.buf, 0);
      buf.set(bytes, this.buf.length);
    }
    const frames = [];
    let at = 0;
    while (buf.length - at >= 4) {
      const n = ((buf[at] << 24) >>> 0) + (buf[at + 1] << 16) + (buf[at + 2] << 8) + buf[at + 3];
      if (n === 0) throw new ProtocolError('frame of length 0');
      if (n > this.max) throw new ProtocolError(`frame of ${n} bytes is over the limit of ${this.max}`);
      if (buf.length - at < 4 + n) break;
      frames.push(parseBody(buf.subarray(at + 4, at + 4 + n)));
      at += 4 + n;
    }
    this.buf = buf.slice(at);
    return frames;
  }
}

// ---- one connection's protocol state (no I/O) ------------------------------------------

function u64Digits(id) {
  const s = typeof id === 'bigint' || typeof id === 'string' ? String(id) : (isUint(id) ? String(id) : '');
  const ok = /^(0|[1-9][0-9]{0,19})$/.test(s) && (s.length < 20 || s <= U64_MAX);
  if (!ok) throw new TypeError('userId must be an unsigned 64-bit integer (number, BigInt or decimal string)');
  return s;
}

function positionFields(d) {
  const eta = d.eta_secs === undefined ? null : d.eta_secs;
  if (!isUint(d.position) || !isUint(d.queue_len) || (eta !== null && !isUint(eta))) return null;
  return { position: d.position, queueLen: d.queue_len, etaSecs: eta };
}

/**
 * The protocol state of one connection: request numbering, answers matched in order,
 * frames decoded and turned into typed events. Pure: feed it bytes and times.
 */
class Protocol {
  constructor(opts) {
    const o = opts || {};
    this.decoder = new FrameDecoder(o.maxFrameBytes);
    this.answerTimeoutMs = o.answerTimeoutMs || 10000;
    this.seq = o.firstSeq || 0;
    /** Requests waiting for an answer, in send order: {seq, cmd, sentAt, deadline}. */
    this.pending = [];
  }

  request(cmd, dataJson, nowMs) {
    this.seq = (this.seq % 0xffffffff) + 1; // never 0: an answer with seq 0 looks like a push
    this.pending.push({ seq: this.seq, cmd, sentAt: nowMs, deadline: nowMs + this.answerTimeoutMs });
    return encodeFrame(`{"cmd":${JSON.stringify(cmd)},"seq":${this.seq},"data":${dataJson}}`);
  }

  login(userId, queue, ticket, nowMs, placeTicket) {
    let data = `{"user_id":${u64Digits(userId)},"queue":${JSON.stringify(queue)}`;
    if (ticket !== undefined && ticket !== null) data += `,"ticket":${JSON.stringify(String(ticket))}`;
    if (typeof placeTicket === 'string') data += `,"place_ticket":${JSON.stringify(placeTicket)}`;
    return this.request('login', data + '}', nowMs);
  }

  heartbeat(nowMs) {
    return this.request('heartbeat', `{"ts":${Date.now()}}`, nowMs);
  }

  leave(nowMs) {
    return this.request('leave', '{}', nowMs);
  }

  /** When the oldest unanswered request times out, or null. */
  deadlineMs() {
    return this.pending.length ? this.pending[0].deadline : null;
  }

  /** The oldest request if it is overdue at `nowMs`, else null. */
  overdue(nowMs) {
    return this.pending.length && this.pending[0].deadline <= nowMs ? this.pending[0] : null;
  }

  /** Received bytes -> typed events. Throws ProtocolError on anything invalid. */
  receive(bytes, nowMs) {
    const events = [];
    for (const f of this.decoder.push(bytes)) {
      const ev = f.seq === 0 && f.code === 0 ? this._push(f) : this._answer(f, nowMs);
      if (ev) events.push(ev);
    }
    return events;
  }

  _push(f) {
    const d = f.data;
    if (f.cmd === 'position') {
      const p = positionFields(d);
      if (!p) throw new ProtocolError('ill-typed position push');
      return Object.assign({ type: 'position' }, p);
    }
    if (f.cmd === 'admitted') {
      const loginAddr = d.login_addr === undefined ? null : d.login_addr;
      if (typeof d.token !== 'string' || !d.token || !isUint(d.expires_at) || (loginAddr !== null && typeof loginAddr !== 'string')) {
        throw new ProtocolError('ill-typed admitted push');
      }
      return { type: 'admitted', token: d.token, expiresAt: d.expires_at, loginAddr };
    }
    if (f.cmd === 'kicked') {
      const after = d.retry_after_secs === undefined ? null : d.retry_after_secs;
      if (typeof d.reason !== 'string' || (after !== null && !isUint(after))) throw new ProtocolError('ill-typed kicked push');
      return { type: 'kicked', reason: d.reason, retryAfterSecs: after };
    }
    return null; // a push this client does not know: ignored (forward compatible)
  }

  _answer(f, nowMs) {
    // To the oldest request (the server answers in order), or, with seq 0 and cmd "",
    // a refusal of the connection or of a frame the server could not parse.
    const req = this.pending[0];
    if (!req) throw new ProtocolError(`answer to no request: ${f.cmd} ${f.seq}`);
    if (f.seq !== 0 && f.seq !== req.seq) throw new ProtocolError(`answer seq ${f.seq}, expected ${req.seq}`);
    this.pending.shift();
    const name = CODE_NAMES[f.code] || `code ${f.code}`;
    if (req.cmd === 'login') {
      if (f.code === 0) {
        const p = positionFields(f.data);
        const resumed = f.data.resumed === undefined ? false : f.data.resumed;
        const state = f.data.state === undefined ? 'waiting' : f.data.state;
        if (!p || typeof resumed !== 'boolean' || typeof state !== 'string') throw new ProtocolError('ill-typed login answer');
        const placeTicket = typeof f.data.place_ticket === 'string' ? f.data.place_ticket : null;
        return Object.assign({ type: 'joined', state, resumed, placeTicket }, p);
      }
      const after = f.data.retry_after_secs;
      return { type: 'refused', code: f.code, name, msg: f.msg, retryAfterSecs: isUint(after) ? after : null };
    }
    if (req.cmd === 'leave') return { type: 'left' };
    if (req.cmd === 'heartbeat' && f.code === 0) return { type: 'heartbeat', rttMs: Math.round(nowMs - req.sentAt) };
    // Other errors on an open session (2, 7, 10) leave it open; closing ones are
    // followed by the close, which brings the reconnect.
    return null;
  }
}

// ---- the policy: reconnects, heartbeats, timeouts -------------------------------------

/** Exponential backoff with jitter: random in [d/2, d], d = initial * 2^attempt, capped. */
function backoffDelayMs(attempt, initialMs, maxMs, random) {
  const d = Math.min(maxMs, initialMs * Math.pow(2, Math.min(attempt, 30)));
  return d / 2 + (random || Math.random)() * (d / 2);
}

function parseAddr(addr) {
  const i = addr.lastIndexOf(':');
  const port = Number(addr.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new TypeError(`address must be HOST:PORT, got ${addr}`);
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

const defaultClock = {
  now: () => (typeof performance !== 'undefined' ? performance.now() : Date.now()),
  setTimeout: (f, ms) => setTimeout(f, ms),
  clearTimeout: (t) => clearTimeout(t),
};

/** One player waiting in one queue. Not reusable: make a new one to join again. */
class QueueClient {
  constructor(opts) {
    const o = opts || {};
    const a = o.addr ? parseAddr(o.addr) : { host: o.host || '127.0.0.1', port: o.port || 7000 };
    this.host = a.host;
    this.port = a.port;
    this.userId = o.userId;
    u64Digits(o.userId); // fail now, not at the first login
    this.queue = o.queue || 'default';
    /** A string, or a function returning a fresh ticket for every login. */
    this.ticket = o.ticket;
    this.heartbeatMs = o.heartbeatMs || 10000;
    this.answerTimeoutMs = o.answerTimeoutMs || 10000;
    this.connectTimeoutMs = o.connectTimeoutMs || 10000;
    this.backoffInitialMs = o.backoffInitialMs || 500;
    this.backoffMaxMs = o.backoffMaxMs || 15000;
    /** Ms without a successful login before giving up (null: never; 0: no reconnect). */
    this.giveUpMs = o.giveUpMs === undefined ? 120000 : o.giveUpMs;
    this.maxFrameBytes = o.maxFrameBytes || FRAME_BYTES_MAX;
    this.transport = o.transport || null;
    this.clock = o.clock || defaultClock;
    this.random = o.random || Math.random;
    this.outcome = null;
    /** A cluster's place ticket from the latest login answer (see the file header). */
    this._placeTicket = null;
    this._listeners = {};
    this._gen = 0; // bumped whenever a connection is abandoned: its late callbacks are ignored
    this._conn = null;
    this._proto = null;
    this._timers = { connect: null, tick: null, retry: null };
    this._seq = 0;
    this._leaveRequested = false;
    this._leaveSent = false;
  }

  on(kind, fn) {
    (this._listeners[kind] = this._listeners[kind] || []).push(fn);
    return this;
  }

  _emit(kind, ev) {
    for (const fn of this._listeners[kind] || []) fn(ev);
    for (const fn of this._listeners['*'] || []) fn(Object.assign({ kind }, ev));
  }

  /** Starts waiting; resolves with the outcome. */
  start() {
    if (this._promise) return this._promise;
    if (!this.transport) this.transport = nodeTransport();
    this._promise = new Promise((resolve) => { this._resolve = resolve; });
    this._attempt = 0; // failed attempts since the last successful login
    this._since = this.clock.now(); // start, or end of the last logged-in connection
    this._connects = 0;
    this._connect();
    return this._promise;
  }

  /** Gives the place up (the server is told when connected) and stops. */
  leave() {
    if (this.outcome) return;
    this._leaveRequested = true;
    if (this._timers.retry !== null) return this._finish('left', {});
    this._sendLeave(); // when not connected yet, the next login is followed by a leave
  }

  _clear(name) {
    if (this._timers[name] !== null) this.clock.clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }

  _dropConnection() {
    this._gen++;
    this._clear('connect');
    this._clear('tick');
    const conn = this._conn;
    this._conn = null;
    this._proto = null;
    this._open = false;
    if (conn) {
      try { conn.close(); } catch (e) { /* already gone */ }
    }
  }

  _finish(kind, fields) {
    if (this.outcome) return;
    this._dropConnection();
    this._clear('retry');
    this.outcome = Object.assign({ kind }, fields);
    this._emit('done', this.outcome);
    this._resolve(this.outcome);
  }

  _connect() {
    this._timers.retry = null;
    if (this._leaveRequested) return this._finish('left', {});
    this._connects++;
    this._emit('connecting', { attempt: this._connects });
    const gen = ++this._gen;
    const mine = (f) => (...args) => { if (gen === this._gen && !this.outcome) f.apply(this, args); };
    this._loggedIn = false;
    this._leaveSent = false;
    this._nextHeartbeat = null;
    this._proto = new Protocol({ maxFrameBytes: this.maxFrameBytes, answerTimeoutMs: this.answerTimeoutMs, firstSeq: this._seq });
    this._timers.connect = this.clock.setTimeout(mine(() => this._lost(`connect: no connection within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
    try {
      this._conn = this.transport.connect(this.host, this.port, {
        onOpen: mine(this._onOpen),
        onData: mine(this._onData),
        onClose: mine(this._onClose),
      });
    } catch (e) {
      this._lost(`connect: ${e.message}`);
    }
  }

  _write(bytes) {
    this._seq = this._proto.seq;
    try {
      this._conn.write(bytes);
      return true;
    } catch (e) {
      this._lost(`connection lost: ${e.message}`);
      return false;
    }
  }

  _sendLeave() {
    if (this._leaveSent || !this._open) return;
    this._leaveSent = true;
    if (this._write(this._proto.leave(this.clock.now()))) this._arm();
  }

  _onOpen() {
    this._clear('connect');
    this._open = true;
    const ticket = typeof this.ticket === 'function' ? this.ticket() : this.ticket;
    if (!this._write(this._proto.login(this.userId, this.queue, ticket, this.clock.now(), this._placeTicket))) return;
    if (this._leaveRequested) this._sendLeave();
    this._arm();
  }

  /** One timer for the next thing due: the oldest answer's deadline or the heartbeat. */
  _arm() {
    this._clear('tick');
    if (!this._proto) return;
    const due = [this._proto.deadlineMs(), this._nextHeartbeat].filter((d) => d !== null);
    if (!due.length) return;
    const gen = this._gen;
    const wait = Math.max(0, Math.min.apply(null, due) - this.clock.now());
    this._timers.tick = this.clock.setTimeout(() => {
      this._timers.tick = null;
      if (gen === this._gen && !this.outcome) this._tick();
    }, wait);
  }

  _tick() {
    const now = this.clock.now();
    const late = this._proto.overdue(now);
    if (late) {
      if (this._leaveSent) return this._finish('left', {});
      const reason = `no answer to ${late.cmd} within ${this.answerTimeoutMs} ms`;
      this._emit('error', { error: reason });
      return this._lost(reason);
    }
    if (this._nextHeartbeat !== null && now >= this._nextHeartbeat) {
      this._nextHeartbeat = now + this.heartbeatMs;
      if (!this._write(this._proto.heartbeat(now))) return;
    }
    this._arm();
  }

  _onData(bytes) {
    let events;
    try {
      events = this._proto.receive(bytes, this.clock.now());
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      if (this._leaveSent) return this._finish('left', {});
      this._emit('error', { error: `protocol error: ${e.message}` });
      return this._lost(`protocol error: ${e.message}`);
    }
    const gen = this._gen;
    for (const ev of events) {
      this._handle(ev);
      if (gen !== this._gen || this.outcome) return; // the connection ended
    }
    this._arm();
  }

  _handle(ev) {
    const type = ev.type;
    const fields = Object.assign({}, ev);
    delete fields.type;
    switch (type) {
      case 'joined':
        if (ev.state === 'admitted') this._placeTicket = null;
        else if (ev.placeTicket !== null) this._placeTicket = ev.placeTicket;
        delete fields.placeTicket;
        this._loggedIn = true;
        if (this._nextHeartbeat === null) this._nextHeartbeat = this.clock.now() + this.heartbeatMs;
        return this._emit('joined', fields);
      case 'position':
      case 'heartbeat':
        return this._emit(type, fields);
      case 'admitted':
        this._emit('admitted', fields);
        return this._finish('admitted', fields);
      case 'kicked':
        this._emit('kicked', fields);
        if (FINAL_KICKS.indexOf(ev.reason) >= 0) return this._finish('kicked', { reason: ev.reason });
        if (ev.reason === 'shutdown' && ev.retryAfterSecs !== null) return this._lost('kicked: shutdown', ev.retryAfterSecs);
        return this._lost(`kicked: ${ev.reason}`);
      case 'refused': {
        if (this._leaveSent) return this._finish('left', {});
        const reason = `login refused: ${ev.name} (${ev.msg})`;
        if (ev.code === 4 && this._placeTicket !== null && String(ev.msg).startsWith('place ticket rejected')) {
          // Refused for the place ticket alone (a cluster whose key changed): forget it
          // and log in again without it.
          this._placeTicket = null;
          return this._lost(reason);
        }
        if (ev.code === 9) return this._lost(reason, ev.retryAfterSecs);
        if (RETRY_CODES.indexOf(ev.code) >= 0) return this._lost(reason);
        return this._finish('refused', { code: ev.code, name: ev.name, msg: ev.msg });
      }
      case 'left':
        return this._finish('left', {});
      default:
        return undefined;
    }
  }

  _onClose(err) {
    if (this._leaveSent) return this._finish('left', {});
    const reason = err ? `connection lost: ${err.message}` : 'connection closed by the server';
    this._emit('error', { error: reason });
    this._lost(reason);
  }

  /** The connection is over and the client should come back (or give up). */
  _lost(reason, retryAfterSecs) {
    const loggedIn = this._loggedIn;
    this._dropConnection();
    if (this._leaveRequested) return this._finish('left', {});
    const now = this.clock.now();
    if (loggedIn) {
      this._attempt = 0;
      this._since = now;
    }
    if (this.giveUpMs !== null && now - this._since >= this.giveUpMs) return this._finish('gave_up', { error: reason });
    let delay;
    if (retryAfterSecs !== undefined && retryAfterSecs !== null) {
      // The server said when to come back; a little jitter spreads the crowd.
      delay = retryAfterSecs * 1000 + this.random() * Math.min(1000, retryAfterSecs * 100);
    } else {
      delay = backoffDelayMs(this._attempt, this.backoffInitialMs, this.backoffMaxMs, this.random);
      this._attempt++;
    }
    this._emit('reconnecting', { attempt: this._connects, delayMs: delay, reason });
    this._timers.retry = this.clock.setTimeout(() => this._connect(), delay);
  }
}

// ---- Node transport (the only Node-specific part) ------------------------------------

/**
 * A transport is `{ connect(host, port, {onOpen, onData, onClose}) -> {write(bytes), close()} }`:
 * `onData` gets Uint8Arrays, `onClose(err?)` is called once when the connection ends
 * (not after `close()` was called). Write one for your engine's sockets.
 */
function nodeTransport() {
  // eslint-disable-next-line global-require
  const net = require('net');
  return {
    connect(host, port, h) {
      const socket = net.connect({ host, port });
      let error = null;
      socket.setNoDelay(true);
      socket.on('connect', () => h.onOpen());
      socket.on('data', (d) => h.onData(d));
      socket.on('error', (e) => { error = e; });
      socket.on('close', () => h.onClose(error));
      return {
        write(bytes) { socket.write(bytes); },
        close() { socket.destroy(); },
      };
    },
  };
}

const api = {
  PROTOCOL_VERSION, FRAME_BYTES_MAX, CODE_NAMES, ProtocolError, FrameDecoder, encodeFrame,
  parseBody, Protocol, QueueClient, backoffDelayMs, nodeTransport, utf8Encode, utf8Decode,
};
if (typeof module !== 'undefined' && module.exports) module.exports = api;

#!/usr/bin/env node
'use strict';
/**
 * Checks queue_client.js against a real queue-server and against fake servers.
 *
 *   node test_client.js --addr HOST:PORT --control HOST:PORT [--only NAME]
 *
 * The server must run with `idle_timeout_secs = 2`, `[queues] auto_create = true` and a
 * short `push_interval_ms` (tests/reference_clients.rs starts it so). Every check waits
 * for events with a deadline, never for a fixed time. Node built-ins only. Prints one
 * line per check; exit 0 when all pass, 1 on the first failure.
 */

const net = require('net');
const http = require('http');
const path = require('path');
const qc = require(path.join(__dirname, 'queue_client.js'));

const { QueueClient } = qc;
const WAIT_MS = 15000; // longest any single wait may take before the check fails

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `f` until it returns a truthy value; fails after WAIT_MS. */
async function until(f, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const v = f();
    if (v) return v;
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(5);
  }
}

// ---- a client whose events are recorded ----------------------------------------------

class Recorder {
  constructor(addr, userId, queue, opts) {
    this.events = [];
    this.client = new QueueClient(Object.assign({ addr, userId, queue }, opts));
    this.client.on('*', (e) => this.events.push(e));
    this.crash = null;
    this.done = this.client.start().catch((e) => { this.crash = e; });
  }

  /** The last events, for failure messages (a client in a loop makes thousands). */
  tail() {
    return (this.events.length > 12 ? '... ' : '') + JSON.stringify(this.events.slice(-12));
  }

  of(kind) {
    return this.events.filter((e) => e.kind === kind);
  }

  wait(pred, what) {
    return until(() => this.events.find(pred), `${what}; events ${this.tail()}`);
  }

  async outcome() {
    await until(() => this.client.outcome || this.crash, `the outcome; events ${this.tail()}`);
    check(!this.crash, `client threw: ${this.crash && this.crash.stack}`);
    return this.client.outcome;
  }
}

function joined(resumed, position) {
  return (e) => e.kind === 'joined' && (resumed === undefined || e.resumed === resumed) && (position === undefined || e.position === position);
}

// ---- the control port -----------------------------------------------------------------

function request(control, method, p, body) {
  const [host, port] = [control.slice(0, control.lastIndexOf(':')), Number(control.slice(control.lastIndexOf(':') + 1))];
  const data = body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path: p, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) }, timeout: WAIT_MS }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve(JSON.parse(text)));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function waitWaiting(control, queue, n) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const q = (await request(control, 'GET', '/v1/stats')).queues[queue] || {};
    if (q.waiting === n) return;
    check(Date.now() < deadline, `queue ${queue} never had ${n} waiting: ${JSON.stringify(q)}`);
    await sleep(10);
  }
}

// ---- a TCP proxy that can cut its connections (the network drops) ---------------------

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${server.address().port}`)));
}

async function proxy(upstream) {
  const i = upstream.lastIndexOf(':');
  const socks = new Set();
  const server = net.createServer((down) => {
    const up = net.connect({ host: upstream.slice(0, i), port: Number(upstream.slice(i + 1)) });
    for (const s of [down, up]) {
      socks.add(s);
      s.on('error', () => {});
      s.on('close', () => { socks.delete(s); down.destroy(); up.destroy(); });
    }
    down.pipe(up);
    up.pipe(down);
  });
  const addr = await listen(server);
  return {
    addr,
    cut() { for (const s of socks) s.destroy(); },
    close() { this.cut(); server.close(); },
  };
}

// ---- a fake server speaking frames, scripted per connection ---------------------------

function frame(obj) {
  const body = Buffer.isBuffer(obj) ? obj : Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}
const ok = (cmd, seq, data) => frame({ cmd, seq, code: 0, msg: 'ok', data });
const push = (cmd, data) => ok(cmd, 0, data);
const WAITING = { state: 'waiting', position: 3, queue_len: 3, eta_secs: null, resumed: false };

class FakeConn {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.frames = [];
    this.ended = false;
    this.waiter = null;
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)) {
        const n = this.buf.readUInt32BE(0);
        this.frames.push(JSON.parse(this.buf.subarray(4, 4 + n).toString()));
        this.buf = this.buf.subarray(4 + n);
      }
      this._wake();
    });
    socket.on('error', () => {});
    socket.on('close', () => { this.ended = true; this._wake(); });
  }

  _wake() {
    if (this.waiter) { const w = this.waiter; this.waiter = null; w(); }
  }

  /** The client's next frame, or null once it closed. */
  async readFrame() {
    for (;;) {
      if (this.frames.length) return this.frames.shift();
      if (this.ended) return null;
      await new Promise((r) => { this.waiter = r; });
    }
  }

  async login() {
    const f = await this.readFrame();
    check(f && f.cmd === 'login', `expected login, got ${JSON.stringify(f)}`);
    return f.seq;
  }

  send(bytes) {
    this.socket.write(bytes);
  }

  /** Reads until the client closes, answering heartbeats. */
  async untilClosed() {
    for (;;) {
      const f = await this.readFrame();
      if (!f) return;
      if (f.cmd === 'heartbeat') this.send(ok('heartbeat', f.seq, { ts: null, server_ms: 0 }));
    }
  }
}

async function fakeServer(script) {
  const fake = { accepted: [], closed: [], errors: [] };
  const server = net.createServer((socket) => {
    const i = fake.accepted.length;
    fake.accepted.push(performance.now());
    Promise.resolve()
      .then(() => script(i, new FakeConn(socket)))
      .catch((e) => fake.errors.push(e.stack))
      .then(() => { fake.closed[i] = performance.now(); socket.end(); });
  });
  fake.addr = await listen(server);
  fake.close = () => {
    server.close();
    check(!fake.errors.length, `fake server script failed: ${fake.errors.join('\n')}`);
  };
  return fake;
}

// ---- the checks against the real server -----------------------------------------------

const FAST = { heartbeatMs: 200, answerTimeoutMs: 5000, backoffInitialMs: 50 };

const CHECKS = {
  async real_resume_after_drop(addr) {
    const px = await proxy(addr);
    const first = new Recorder(addr, 100, 'drop', FAST);
    await first.wait(joined(undefined, 1), 'first joined at 1');
    const c = new Recorder(px.addr, 101, 'drop', FAST);
    await c.wait(joined(false, 2), 'joined at 2');
    px.cut();
    const e = await c.wait(joined(true), 'joined again, resumed');
    check(e.position === 2, `resumed at ${e.position}, not 2`);
    check(c.of('connecting').length === 2, `connections ${c.tail()}`);
    check(c.of('reconnecting').length >= 1, 'no reconnecting event');
    for (const r of [c, first]) {
      r.client.leave();
      check((await r.outcome()).kind === 'left', `outcome ${JSON.stringify(r.client.outcome)}`);
    }
    px.close();
  },

  async real_resume_after_idle_kick(addr) {
    // Heartbeats far apart: the server (idle_timeout_secs = 2) kicks, the client resumes.
    const c = new Recorder(addr, 200, 'idle', { heartbeatMs: 30000, backoffInitialMs: 50 });
    await c.wait(joined(false), 'joined');
    await c.wait((e) => e.kind === 'kicked' && e.reason === 'idle_timeout', 'kicked idle_timeout');
    await c.wait(joined(true, 1), 'joined again, resumed');
    c.client.leave();
    check((await c.outcome()).kind === 'left', 'left');
  },

  async real_heartbeat_keeps_alive(addr) {
    const c = new Recorder(addr, 300, 'alive', FAST);
    await c.wait(joined(), 'joined');
    // 15 answered heartbeats 0.2 s apart span well over idle_timeout_secs = 2.
    await until(() => c.of('heartbeat').length >= 15, '15 heartbeats');
    check(!c.of('kicked').length, `kicked ${JSON.stringify(c.of('kicked'))}`);
    check(c.of('connecting').length === 1, `reconnected ${c.tail()}`);
    c.client.leave();
    check((await c.outcome()).kind === 'left', 'left');
  },

  async real_duplicate_login_stops_older(addr) {
    const older = new Recorder(addr, 400, 'dup', FAST);
    await older.wait(joined(false), 'older joined');
    const newer = new Recorder(addr, 400, 'dup', FAST);
    await newer.wait(joined(true, 1), 'newer joined, resumed');
    const out = await older.outcome(); // settled: the older client will not come back
    check(out.kind === 'kicked' && out.reason === 'duplicate_login', `older ${JSON.stringify(out)}`);
    check(older.of('connecting').length === 1, `older reconnected ${older.tail()}`);
    newer.client.leave();
    check((await newer.outcome()).kind === 'left', 'newer left');
  },

  async real_leave_gives_up_place(addr, control) {
    const c = new Recorder(addr, 500, 'leave', FAST);
    await c.wait(joined(), 'joined');
    await waitWaiting(control, 'leave', 1);
    c.client.leave();
    check((await c.outcome()).kind === 'left', 'left');
    await waitWaiting(control, 'leave', 0);
    check(c.of('connecting').length === 1, `reconnected after leave ${c.tail()}`);
  },

  async real_admitted_token_verifies(addr, control) {
    const c = new Recorder(addr, 600, 'adm', FAST);
    await c.wait(joined(), 'joined');
    await request(control, 'POST', '/v1/queues/adm/admit', { count: 1 });
    const out = await c.outcome();
    check(out.kind === 'admitted', `outcome ${JSON.stringify(out)}`);
    const v = await request(control, 'POST', '/v1/tokens/verify', { token: out.token });
    check(v.valid === true && v.user_id === 600, `verify ${JSON.stringify(v)}`);
  },

  // ---- the checks against fake servers -------------------------------------------------

  async fake_shutting_down_is_waited_out() {
    const fake = await fakeServer(async (i, conn) => {
      const seq = await conn.login();
      if (i === 0) {
        conn.send(frame({ cmd: 'login', seq, code: 9, msg: 'shutting down', data: { retry_after_secs: 1 } }));
      } else if (i === 1) {
        conn.send(ok('login', seq, WAITING));
        conn.send(push('kicked', { reason: 'shutdown', retry_after_secs: 1 }));
      } else {
        conn.send(ok('login', seq, Object.assign({}, WAITING, { resumed: true })));
        conn.send(push('admitted', { token: 'tok-1', expires_at: 1, login_addr: '10.0.0.1:9000' }));
        await conn.untilClosed();
      }
    });
    const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000, backoffInitialMs: 10 });
    const out = await c.outcome();
    check(out.kind === 'admitted' && out.token === 'tok-1' && out.loginAddr === '10.0.0.1:9000', `outcome ${JSON.stringify(out)}`);
    check(fake.accepted.length === 3, `connections ${fake.accepted.length}`);
    for (const i of [1, 2]) {
      // The client came back no sooner than retry_after_secs after the server closed.
      const gap = fake.accepted[i] - fake.closed[i - 1];
      check(gap >= 1000, `came back after ${gap} ms, retry_after_secs was 1`);
    }
    check((await c.wait(joined(true), 'resumed')).position === 3, 'resumed position');
    fake.close();
  },

  async fake_place_ticket_is_presented() {
    // A cluster's login answer carries a place_ticket: the client presents the latest
    // one at its next login, and forgets one the server rejects (then retries at once).
    const seen = [];
    const fake = await fakeServer(async (i, conn) => {
      const f = await conn.readFrame();
      check(f && f.cmd === 'login', `expected login, got ${JSON.stringify(f)}`);
      seen[i] = f.data.place_ticket === undefined ? null : f.data.place_ticket;
      const seq = f.seq;
      if (i === 0) {
        conn.send(ok('login', seq, Object.assign({}, WAITING, { place_ticket: 'T1' })));
      } else if (i === 1) {
        conn.send(ok('login', seq, Object.assign({}, WAITING, { resumed: true, place_ticket: 'T2' })));
      } else if (i === 2) {
        conn.send(frame({ cmd: 'login', seq, code: 4, msg: 'place ticket rejected: bad signature', data: {} }));
      } else {
        conn.send(ok('login', seq, Object.assign({}, WAITING, { place_ticket: 'T3' })));
        conn.send(push('admitted', { token: 'tok-3', expires_at: 1, login_addr: null }));
        await conn.untilClosed();
      }
    });
    const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000, backoffInitialMs: 10 });
    const out = await c.outcome();
    check(out.kind === 'admitted' && out.token === 'tok-3', `outcome ${JSON.stringify(out)}`);
    check(JSON.stringify(seen) === JSON.stringify([null, 'T1', 'T2', null]), `presented ${JSON.stringify(seen)}`);
    fake.close();
  },

  async fake_rate_limited_then_admitted() {
    const fake = await fakeServer(async (i, conn) => {
      if (i === 0) { // a connection over the limit: one frame with cmd "" and close
        conn.send(frame({ cmd: '', seq: 0, code: 8, msg: 'too many connections', data: {} }));
        return;
      }
      const seq = await conn.login();
      conn.send(ok('login', seq, WAITING));
      conn.send(push('admitted', { token: 'tok-2', expires_at: 1, login_addr: null }));
      await conn.untilClosed();
    });
    const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000, backoffInitialMs: 10 });
    const out = await c.outcome();
    check(out.kind === 'admitted' && out.token === 'tok-2', `outcome ${JSON.stringify(out)}`);
    fake.close();
  },

  async fake_final_answers_are_final() {
    const cases = [
      ['kicked duplicate_login', push('kicked', { reason: 'duplicate_login' }), 'kicked'],
      ['kicked removed', push('kicked', { reason: 'removed' }), 'kicked'],
      ['AUTH_FAILED', 4, 'refused'],
      ['QUEUE_FULL', 5, 'refused'],
    ];
    for (const [name, what, kind] of cases) {
      const fake = await fakeServer(async (i, conn) => {
        const seq = await conn.login();
        if (typeof what === 'number') conn.send(frame({ cmd: 'login', seq, code: what, msg: name, data: {} }));
        else { conn.send(ok('login', seq, WAITING)); conn.send(what); }
        await conn.untilClosed();
      });
      const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000, backoffInitialMs: 10 });
      const out = await c.outcome();
      check(out.kind === kind, `${name}: outcome ${JSON.stringify(out)}`);
      check(fake.accepted.length === 1, `${name}: reconnected`);
      fake.close();
    }
  },

  async fake_split_and_batched_frames() {
    const fake = await fakeServer(async (i, conn) => {
      const seq = await conn.login();
      const answer = ok('login', seq, WAITING);
      for (let k = 0; k < answer.length; k++) {
        conn.send(answer.subarray(k, k + 1));
        await sleep(0); // separate writes, so separate reads on the client
      }
      conn.send(Buffer.concat([
        push('position', { position: 2, queue_len: 2, eta_secs: 4 }),
        push('unknown_push', { x: 1 }),
        push('admitted', { token: 'tok-3', expires_at: 1, login_addr: null }),
      ]));
      await conn.untilClosed();
    });
    const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000 });
    const out = await c.outcome();
    check(out.kind === 'admitted' && out.token === 'tok-3', `outcome ${JSON.stringify(out)}`);
    const p = c.of('position');
    check(p.length === 1 && p[0].position === 2 && p[0].etaSecs === 4, `positions ${JSON.stringify(p)}`);
    fake.close();
  },

  async fake_garbage_gives_clean_errors() {
    let seed = 9;
    const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    const len = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n, 0); return b; };
    const cases = [
      ['length over the limit', Buffer.from([255, 255, 255, 255]), 'over the limit'],
      ['length just over 1 MiB', len((1 << 20) + 1), 'over the limit'],
      ['zero length', len(0), 'length 0'],
      ['not JSON', frame(Buffer.from('hello')), 'not JSON'],
      ['not an object', frame(Buffer.from('[1,2]')), 'not a JSON object'],
      ['bad UTF-8', frame(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d])), 'not UTF-8'],
      ['deep nesting', frame(Buffer.from('['.repeat(200000))), 'not JSON'],
      ['ill-typed code', frame(Buffer.from('{"cmd":"login","seq":1,"code":"0"}')), 'ill-typed'],
      ['bool seq', frame(Buffer.from('{"cmd":"login","seq":true,"code":0}')), 'ill-typed'],
      ['data not an object', frame(Buffer.from('{"cmd":"login","seq":1,"code":0,"data":[]}')), 'ill-typed'],
      ['wrong seq', ok('login', 999, WAITING), 'expected'],
      ['ill-typed login answer', ok('login', 1, { position: 'x', queue_len: 1 }), 'ill-typed'],
      ['ill-typed push', push('position', { position: -1, queue_len: 1 }), 'ill-typed'],
      ['ill-typed admitted', push('admitted', { token: 5, expires_at: 1 }), 'ill-typed'],
      ['ill-typed kicked', push('kicked', { reason: null }), 'ill-typed'],
      ['random bytes', Buffer.from(Array.from({ length: 4096 }, () => Math.floor(rand() * 256))), ''],
      ['silence', Buffer.alloc(0), 'no answer'],
      ['close', null, 'closed'],
    ];
    for (const [name, garbage, expect] of cases) {
      const fake = await fakeServer(async (i, conn) => {
        await conn.login();
        if (garbage === null) return;
        conn.send(garbage);
        await conn.untilClosed(); // the client must be the one to hang up
      });
      // giveUpMs 0: no reconnect, so the first failure is the outcome. Only the silent
      // server waits for the answer deadline; the others must fail before it.
      const answerTimeoutMs = name === 'silence' ? 300 : 10000;
      const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 5000, answerTimeoutMs, giveUpMs: 0 });
      const out = await c.outcome();
      check(out.kind === 'gave_up', `${name}: outcome ${JSON.stringify(out)}`);
      check(out.error.includes(expect), `${name}: error ${out.error} lacks ${expect}`);
      check(c.of('error').length >= 1, `${name}: no error event`);
      fake.close();
    }
    // The decoder alone, fed random chunks: only ProtocolError, never anything else.
    const alphabet = Buffer.from('{}[]"a:1,\\u');
    for (let n = 0; n < 2000; n++) {
      const d = new qc.FrameDecoder(64);
      try {
        for (let k = 0; k < 4; k++) {
          d.push(Uint8Array.from({ length: Math.floor(rand() * 12) }, () => Math.floor(rand() * 256)));
          d.push(frame(Buffer.from(Array.from({ length: Math.floor(rand() * 8) }, () => alphabet[Math.floor(rand() * alphabet.length)]))));
        }
      } catch (e) {
        if (!(e instanceof qc.ProtocolError)) throw e;
      }
    }
  },

  async fake_answer_timeout_reconnects() {
    // The first server never answers the heartbeat: the client takes it for dead and
    // reconnects; the second admits it.
    const fake = await fakeServer(async (i, conn) => {
      const seq = await conn.login();
      conn.send(ok('login', seq, WAITING));
      if (i === 0) {
        while (await conn.readFrame()); // swallows heartbeats, answers nothing
        return;
      }
      conn.send(push('admitted', { token: 'tok-4', expires_at: 1, login_addr: null }));
      await conn.untilClosed();
    });
    const c = new Recorder(fake.addr, 1, 'q', { heartbeatMs: 100, answerTimeoutMs: 1000, backoffInitialMs: 10 });
    const out = await c.outcome();
    check(out.kind === 'admitted' && out.token === 'tok-4', `outcome ${JSON.stringify(out)}`);
    check(c.of('error').some((e) => e.error.includes('no answer to heartbeat')), `errors ${JSON.stringify(c.of('error'))}`);
    fake.close();
  },

  async portable_utf8_matches_text_decoder() {
    // The fallback UTF-8 codec (for runtimes without TextDecoder) agrees with Node's.
    const TD = globalThis.TextDecoder;
    const TE = globalThis.TextEncoder;
    const pieces = [0x41, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xa0, 0xf4, 0x90, 0xbf, 0xc0, 0xff];
    let seed = 3;
    const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    try {
      for (let n = 0; n < 20000; n++) {
        const b = Uint8Array.from({ length: Math.floor(rand() * 6) }, () => (rand() < 0.3 ? Math.floor(rand() * 256) : pieces[Math.floor(rand() * pieces.length)]));
        let want;
        try { want = new TD('utf-8', { fatal: true }).decode(b); } catch (e) { want = null; }
        globalThis.TextDecoder = undefined;
        let got;
        try { got = qc.utf8Decode(b); } catch (e) { got = null; } finally { globalThis.TextDecoder = TD; }
        check(want === got, `bytes ${Array.from(b)}: ${want} vs ${got}`);
      }
      globalThis.TextEncoder = undefined;
      const s = 'héllo €😀';
      const enc = qc.utf8Encode(s);
      globalThis.TextEncoder = TE;
      check(Buffer.from(enc).equals(Buffer.from(s)), 'encoding');
    } finally {
      globalThis.TextDecoder = TD;
      globalThis.TextEncoder = TE;
    }
  },
};

async function main() {
  const args = { only: '' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) args[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!args.addr || !args.control) {
    process.stderr.write('usage: node test_client.js --addr HOST:PORT --control HOST:PORT [--only NAME]\n');
    process.exit(2);
  }
  for (const [name, f] of Object.entries(CHECKS)) {
    if (!name.includes(args.only)) continue;
    const start = Date.now();
    try {
      await f(args.addr, args.control);
    } catch (e) {
      process.stdout.write(`FAIL ${name}\n${e.stack}\n`);
      process.exit(1);
    }
    process.stdout.write(`ok   ${name} (${((Date.now() - start) / 1000).toFixed(2)} s)\n`);
  }
  process.exit(0);
}

main();

#!/usr/bin/env node
'use strict';
/**
 * Joins a queue-server queue and waits to be admitted.
 *
 *   node example.js --addr 127.0.0.1:7000 --user 42 [--queue default] [--ticket T]
 *                   [--timeout SECS] [--heartbeat SECS] [--give-up SECS]
 *
 * Progress (positions as they move, reconnects) goes to stderr; on admission the token
 * alone goes to stdout, so `TOKEN=$(node example.js ...)` works in a script.
 *
 * Exit codes: 0 admitted, 2 bad arguments, 3 refused by the server (the login answer's
 * error code), 4 kicked for good (duplicate_login, removed), 5 gave up (timeout, server
 * unreachable past the give-up time), 130 interrupted (the place is given up first).
 */

const path = require('path');
const { QueueClient } = require(path.join(__dirname, 'queue_client.js'));

const EXIT = { admitted: 0, usage: 2, refused: 3, kicked: 4, gaveUp: 5, interrupted: 130 };

function say(text) {
  process.stderr.write(`${text}\n`);
}

function usage(problem) {
  say(`error: ${problem}`);
  say('usage: node example.js --addr HOST:PORT --user ID [--queue Q] [--ticket T] [--timeout SECS] [--heartbeat SECS] [--give-up SECS]');
  process.exit(EXIT.usage);
}

function parseArgs(argv) {
  const args = { addr: '127.0.0.1:7000', user: null, queue: 'default', ticket: undefined, timeout: 0, heartbeat: 10, giveUp: 120 };
  const names = { '--addr': 'addr', '--user': 'user', '--queue': 'queue', '--ticket': 'ticket', '--timeout': 'timeout', '--heartbeat': 'heartbeat', '--give-up': 'giveUp' };
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (flag === '-h' || flag === '--help') usage('help requested');
    const name = names[flag];
    if (!name) usage(`unknown argument ${flag}`);
    if (value === undefined) {
      i++;
      if (i >= argv.length) usage(`${flag} needs a value`);
      value = argv[i];
    }
    args[name] = value;
  }
  if (args.user === null) usage('--user is required');
  if (!/^(0|[1-9][0-9]{0,19})$/.test(args.user) || (args.user.length === 20 && args.user > '18446744073709551615')) usage('--user must be an unsigned 64-bit integer');
  for (const k of ['timeout', 'heartbeat', 'giveUp']) {
    const n = Number(args[k]);
    if (!Number.isFinite(n) || n < 0) usage(`--${k === 'giveUp' ? 'give-up' : k} must be a number of seconds`);
    args[k] = n;
  }
  return args;
}

function eta(secs) {
  return secs === null ? 'unknown' : `${secs} s`;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = new QueueClient({
    addr: args.addr,
    userId: args.user, // a decimal string: the full u64 range, no float rounding
    queue: args.queue,
    ticket: args.ticket,
    heartbeatMs: args.heartbeat * 1000,
    giveUpMs: args.giveUp * 1000,
  });
  client.on('joined', (e) => {
    const resumed = e.resumed ? ' (resumed)' : '';
    if (e.state === 'admitted') say(`joined: already admitted${resumed}`);
    else say(`joined${resumed}: position ${e.position} of ${e.queueLen}, eta ${eta(e.etaSecs)}`);
  });
  client.on('position', (e) => say(`position ${e.position} of ${e.queueLen}, eta ${eta(e.etaSecs)}`));
  client.on('admitted', (e) => say(`admitted; login server: ${e.loginAddr || '(not given)'}`));
  client.on('kicked', (e) => say(`kicked: ${e.reason}${e.retryAfterSecs === null ? '' : `, retry after ${e.retryAfterSecs} s`}`));
  client.on('reconnecting', (e) => say(`reconnecting in ${(e.delayMs / 1000).toFixed(1)} s (${e.reason})`));
  client.on('error', (e) => say(`error: ${e.error}`));

  let timedOut = false;
  let interrupted = false;
  const timer = args.timeout > 0 ? setTimeout(() => { timedOut = true; client.leave(); }, args.timeout * 1000) : null;
  process.on('SIGINT', () => { interrupted = true; client.leave(); });

  say(`joining queue '${args.queue}' at ${args.addr} as user ${args.user}`);
  client.start().then((out) => {
    if (timer) clearTimeout(timer);
    let code;
    if (out.kind === 'admitted') {
      process.stdout.write(`${out.token}\n`, () => process.exit(EXIT.admitted));
      return;
    }
    if (out.kind === 'refused') {
      say(`refused: ${out.name} (${out.msg})`);
      code = EXIT.refused;
    } else if (out.kind === 'kicked') {
      say(`kicked for good: ${out.reason}`);
      code = EXIT.kicked;
    } else if (out.kind === 'left' && interrupted) {
      say('interrupted: left the queue');
      code = EXIT.interrupted;
    } else if (out.kind === 'left' && timedOut) {
      say(`gave up: not admitted within ${args.timeout} s`);
      code = EXIT.gaveUp;
    } else {
      say(`gave up: ${out.error || out.kind}`);
      code = EXIT.gaveUp;
    }
    process.exit(code);
  });
}

main();

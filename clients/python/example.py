#!/usr/bin/env python3
"""Joins a queue-server queue and waits to be admitted.

    python3 example.py --addr 127.0.0.1:7000 --user 42 [--queue default] [--ticket T]
                       [--timeout SECS] [--heartbeat SECS]

Progress (positions as they move, reconnects) goes to stderr; on admission the token
alone goes to stdout, so ``TOKEN=$(python3 example.py ...)`` works in a script.

Exit codes: 0 admitted, 2 bad arguments, 3 refused by the server (the login answer's
error code), 4 kicked for good (duplicate_login, removed), 5 gave up (timeout, server
unreachable past the give-up time), 130 interrupted (the place is given up first).
"""

import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_client import QueueClient  # noqa: E402

EXIT_ADMITTED, EXIT_REFUSED, EXIT_KICKED, EXIT_GAVE_UP, EXIT_INTERRUPTED = 0, 3, 4, 5, 130


def say(text):
    print(text, file=sys.stderr, flush=True)


def eta(secs):
    return "unknown" if secs is None else "%d s" % secs


def on_event(ev):
    if ev.kind == "joined":
        if ev.state == "admitted":
            say("joined: already admitted%s" % (" (resumed)" if ev.resumed else ""))
        else:
            say(
                "joined%s: position %d of %d, eta %s"
                % (" (resumed)" if ev.resumed else "", ev.position, ev.queue_len, eta(ev.eta_secs))
            )
    elif ev.kind == "position":
        say("position %d of %d, eta %s" % (ev.position, ev.queue_len, eta(ev.eta_secs)))
    elif ev.kind == "admitted":
        say("admitted; login server: %s" % (ev.login_addr or "(not given)",))
    elif ev.kind == "kicked":
        after = "" if ev.retry_after_secs is None else ", retry after %d s" % ev.retry_after_secs
        say("kicked: %s%s" % (ev.reason, after))
    elif ev.kind == "reconnecting":
        say("reconnecting in %.1f s (%s)" % (ev.delay_secs, ev.reason))
    elif ev.kind == "error":
        say("error: %s" % (ev.error,))


def main():
    p = argparse.ArgumentParser(description="Wait in a queue-server queue.")
    p.add_argument("--addr", default="127.0.0.1:7000", help="player port, HOST:PORT")
    p.add_argument("--user", type=int, required=True, help="user id (u64)")
    p.add_argument("--queue", default="default", help="queue name")
    p.add_argument("--ticket", default=None, help="login ticket (JWT) when auth is on")
    p.add_argument("--timeout", type=float, default=0, help="give up after SECS (0 = never)")
    p.add_argument("--heartbeat", type=float, default=10, help="heartbeat interval, seconds")
    p.add_argument("--give-up", type=float, default=120, help="seconds without a login before giving up")
    args = p.parse_args()
    if args.user < 0 or args.user >= 1 << 64:
        p.error("--user must be an unsigned 64-bit integer")

    client = QueueClient(
        args.addr,
        user_id=args.user,
        queue=args.queue,
        ticket=args.ticket,
        on_event=on_event,
        heartbeat_secs=args.heartbeat,
        give_up_secs=args.give_up,
    )
    timed_out = threading.Event()
    if args.timeout > 0:

        def expire():
            timed_out.set()
            client.leave()

        timer = threading.Timer(args.timeout, expire)
        timer.daemon = True
        timer.start()
    say("joining queue %r at %s as user %d" % (args.queue, args.addr, args.user))
    client.start()
    try:
        while client.join(0.2) is None:
            pass
    except KeyboardInterrupt:
        client.leave()
        client.join()
        say("interrupted: left the queue")
        return EXIT_INTERRUPTED
    out = client.outcome
    if out.kind == "admitted":
        print(out.token, flush=True)
        return EXIT_ADMITTED
    if out.kind == "refused":
        say("refused: %s (%s)" % (out.name, out.msg))
        return EXIT_REFUSED
    if out.kind == "kicked":
        say("kicked for good: %s" % (out.reason,))
        return EXIT_KICKED
    if out.kind == "left" and timed_out.is_set():
        say("gave up: not admitted within %s s" % (args.timeout,))
        return EXIT_GAVE_UP
    say("gave up: %s" % (getattr(out, "error", out.kind),))
    return EXIT_GAVE_UP


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Failover gap probe for scripts/bench-cluster.sh.

Calls `POST /v1/queues/{q}/admit {"count": 1}` every PERIOD through a surviving node's
control port, kill -9's the owner process after PRE seconds, and keeps calling until
the first successful admission after the kill (or a deadline). A call is a success when
its answer is 200 and names at least one admitted player. All times are this process's
monotonic clock at the moment the answer arrived.

Prints one JSON object: gap_s (first success after the kill - last success before it),
kill_to_first_s, and the answers seen after the kill by status.

  failover_probe.py CONTROL OWNER_PID [--queue default] [--pre 4] [--period 0.05] [--max 60]
"""
import argparse
import json
import os
import signal
import time
import urllib.error
import urllib.request


def admit(control, queue, timeout_s):
    """One admit call: (status, admitted count)."""
    req = urllib.request.Request(
        f"http://{control}/v1/queues/{queue}/admit",
        data=b'{"count":1}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = json.loads(r.read() or b"{}")
            return r.status, len(body.get("admitted", []))
    except urllib.error.HTTPError as e:
        return e.code, 0
    except (OSError, ValueError) as e:  # refused, reset, timeout, bad body
        return type(e).__name__, 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("control")
    ap.add_argument("owner_pid", type=int)
    ap.add_argument("--queue", default="default")
    ap.add_argument("--pre", type=float, default=4.0)
    ap.add_argument("--period", type=float, default=0.05)
    ap.add_argument("--max", type=float, default=60.0)
    a = ap.parse_args()

    start = time.monotonic()
    last_before = None
    kill_at = None
    first_after = None
    after = {}
    before_ok = 0
    next_call = start
    while True:
        now = time.monotonic()
        if kill_at is None and now - start >= a.pre:
            os.kill(a.owner_pid, signal.SIGKILL)
            kill_at = time.monotonic()
        if kill_at is not None and now - kill_at > a.max:
            break
        status, n = admit(a.control, a.queue, 2.0)
        t = time.monotonic()
        ok = status == 200 and n > 0
        if kill_at is None:
            if ok:
                last_before, before_ok = t, before_ok + 1
        else:
            key = f"{status}" + (" empty" if status == 200 and n == 0 else "")
            after[key] = after.get(key, 0) + 1
            if ok:
                first_after = t
                break
        next_call += a.period
        time.sleep(max(0.0, next_call - time.monotonic()))

    out = {
        "admissions_before_kill": before_ok,
        "last_before_to_kill_s": None if last_before is None else round(kill_at - last_before, 3),
        "kill_to_first_s": None if first_after is None else round(first_after - kill_at, 3),
        "gap_s": None
        if first_after is None or last_before is None
        else round(first_after - last_before, 3),
        "answers_after_kill": after,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

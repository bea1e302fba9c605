#!/usr/bin/env python3
"""Memory per logged-in connection of a running queue-server.

Opens N connections, logs each in (distinct user ids), and compares the server's VmRSS
before and after, with every connection still open and idle. Kernel socket buffers are
not in VmRSS.

    scripts/conn-memory.py N SERVER_PID [HOST:PORT] [--source ADDR ...] [--user-base U]
                           [--smaps TOP]

Default target 127.0.0.1:7000. With one `--source` (or none) the connections come from
this process; with several, the N connections are split over one child process per
source address (each bound to it), so more than one process's `ulimit -n` worth of
connections can be opened: 19,000 = `--source 127.0.0.1 --source 127.0.0.2`. The server
must allow that many per IP (`server.max_connections_per_ip`) and not kick idle players
during the measurement (`server.idle_timeout_secs`). `--smaps TOP` also prints which
mappings grew (mimalloc's arenas, thread stacks, io_uring rings...), to tell a run that
read high from one that did not.
"""
import argparse
import json
import os
import socket
import struct
import sys
import time

# Linux <netinet/in.h>; not exported by Python's socket module before 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])


def rss_by_mapping(pid):
    """{mapping header (address range, perms, path): Rss KiB} from /proc/PID/smaps."""
    out, key = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                key = " ".join(parts[:2] + parts[5:])
            elif first == "Rss:":
                out[key] = int(line.split()[1])
    return out


def print_growth(before, after, top):
    """The `top` mappings whose Rss grew most, and what the rest added up to."""
    growth = sorted(((after.get(k, 0) - before.get(k, 0), k) for k in after), reverse=True)
    for kib, k in growth[:top]:
        print(f"  {kib:>8} KiB  {k}")
    print(f"  {sum(g for g, _ in growth[top:]):>8} KiB  (all other mappings)")


def open_logged_in(count, host, port, source, user_base):
    """Opens `count` logged-in connections (bound to `source` if given); returns them."""
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            # Port chosen at connect time, not by bind(): bind() alone cannot reuse a
            # port still in TIME_WAIT from the previous run (EADDRINUSE after a few
            # 19,000 runs in a row); connect() can, since the 4-tuple differs.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
        s.connect((host, port))
        body = json.dumps({"cmd": "login", "seq": 1, "data": {"user_id": user_base + i}}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        socks.append(s)
    for s in socks:
        size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
        answer = json.loads(s.recv(size, socket.MSG_WAITALL))
        assert answer["code"] == 0, answer
    return socks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("pid")
    p.add_argument("target", nargs="?", default="127.0.0.1:7000")
    p.add_argument("--source", action="append", default=[],
                   help="source address to bind; repeat to split over processes")
    p.add_argument("--user-base", type=int, default=0, help="first user id")
    p.add_argument("--smaps", type=int, default=0, metavar="TOP",
                   help="also print the TOP mappings (/proc/PID/smaps) whose RSS grew most")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    sources = a.source or [None]

    maps_before = rss_by_mapping(a.pid) if a.smaps else None
    before = rss_kib(a.pid)
    start = time.time()
    if len(sources) == 1:
        socks = open_logged_in(a.n, host, port, sources[0], a.user_base)
        children = []
    else:
        # One child per source: each logs its share in, says so on a pipe, then holds
        # its connections open until the parent closes the other pipe.
        children = []
        share = (a.n + len(sources) - 1) // len(sources)
        for k, source in enumerate(sources):
            count = min(share, a.n - k * share)
            ready_r, ready_w = os.pipe()
            hold_r, hold_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                os.close(hold_w)
                for _, earlier_ready, earlier_hold in children:
                    # Only the parent may hold these: an earlier child waits for EOF.
                    os.close(earlier_ready)
                    os.close(earlier_hold)
                try:
                    socks = open_logged_in(count, host, port, source, a.user_base + k * share)
                    os.write(ready_w, b"k")
                    os.read(hold_r, 1)
                    os._exit(0)
                except BaseException as e:  # report and fail the parent's wait
                    print(f"client {source}: {e}", file=sys.stderr)
                    os._exit(1)
            os.close(ready_w)
            os.close(hold_r)
            children.append((pid, ready_r, hold_w))
        for pid, ready_r, _ in children:
            if os.read(ready_r, 1) != b"k":
                sys.exit(f"a client process failed (pid {pid})")
    took = time.time() - start
    time.sleep(0.5)
    after = rss_kib(a.pid)
    print(f"{a.n} logged-in connections from {len(sources)} process(es): server RSS "
          f"{before} KiB -> {after} KiB, {(after - before) * 1024 / a.n:.0f} bytes per "
          f"connection (logins took {took:.2f} s)")
    if a.smaps:
        print_growth(maps_before, rss_by_mapping(a.pid), a.smaps)
    for pid, _, hold_w in children:
        os.close(hold_w)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()

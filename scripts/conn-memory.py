#!/usr/bin/env python3
"""Memory per logged-in connection of a running queue-server.

Opens N connections from this process (N < ulimit -n), logs each in, and compares the
server's VmRSS before and after. Kernel socket buffers are not in VmRSS.

    scripts/conn-memory.py N SERVER_PID [HOST:PORT]     (default 127.0.0.1:7000)
"""
import json
import socket
import struct
import sys
import time

n, pid = int(sys.argv[1]), sys.argv[2]
host, port = (sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:7000").rsplit(":", 1)


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])


before = rss_kib()
socks = []
start = time.time()
for user in range(n):
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"cmd": "login", "seq": 1, "data": {"user_id": user}}).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
    socks.append(s)
for s in socks:
    size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    answer = json.loads(s.recv(size, socket.MSG_WAITALL))
    assert answer["code"] == 0, answer
took = time.time() - start
time.sleep(0.5)
after = rss_kib()
print(f"{n} logged-in connections: server RSS {before} KiB -> {after} KiB, "
      f"{(after - before) * 1024 / n:.0f} bytes per connection (logins took {took:.2f} s)")

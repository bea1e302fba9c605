#!/usr/bin/env bash
# A 3-node cluster against one node on this machine, same work, as ratios; then the
# failover gap. Writes bench/results/cluster-<date>.md (and .json beside it).
#
#   scripts/bench-cluster.sh               # ~6 minutes
#   QUICK=1 scripts/bench-cluster.sh       # tiny sizes, one round, one failover run per TTL
#   ROUNDS=3 RUNS=3 (defaults): rounds of the ratio work, failover runs per TTL
#   FAILOVER_ONLY=1: skip the ratio rounds (writes cluster-failover-w<WINDOW>-<date>.md)
#   RUNS=0: skip the failover runs (ratios only)
#   TTLS="5 2" WINDOW=30 (defaults): lease_ttl_secs values and recovery_window_secs of
#     the failover runs
#
# (a) single: one queue-server `--cores 1`, no [cluster];
# (b) cluster: etcd on loopback (fresh data dir) + 3 queue-servers `--cores 1`, players
#     spread round-robin over the three (`queue-bench --target A,B,C`), admissions
#     (drain) through a node that does NOT own queue `default` (forwarded to the owner).
# Each scenario runs against fresh processes: storm (logins/s, all at once), steady
# (position every 1 s per player: p50/p99 at a fixed offered rate), drain at a fixed
# rate (admit -> push lag) and drainmax (admit as fast as the calls go: delivered
# admitted/s, the only drain throughput figure).
# Failover: fresh cluster with lease_ttl_secs = 5 and 2 (recovery_window_secs = WINDOW,
# 30 by default: the new owner holds admission that long after a takeover). A feeder (queue-bench storm at a fixed rate,
# through the two non-owner nodes) keeps logging in fresh players; scripts/failover_probe.py
# admits 1 every 50 ms through a non-owner's control port, kill -9's the owner and
# prints the gap (first admission after the kill - last before, answer times).
# Every server: logins per loop and connections per IP unlimited (all players come
# from 127.0.0.1; the defaults would turn a 15,000 storm into RATE_LIMITED).
# Needs etcd (Debian: etcd-server). Ports: 184x0.. (single), 181x0.. (nodes), 23890/23900.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not found (Debian: apt-get install etcd-server)" >&2; exit 1; }

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  USERS=300; STORM=300; STEADY_FOR=3s; DRAIN=300; DRAIN_RATE=300; MAX=300; RUNS=1; ROUNDS=1; FEED=20
else
  USERS=5000; STORM=15000; STEADY_FOR=10s; DRAIN=5000; DRAIN_RATE=2000; MAX=10000; RUNS=${RUNS:-3}; ROUNDS=${ROUNDS:-3}; FEED=40
fi
DATE=$(date -u +%Y-%m-%d)
OUT=bench/results
RUN=$(mktemp -d /tmp/bench-cluster.XXXXXX)
mkdir -p "$OUT"
cargo build --release -q -p queue-server -p queue-bench
export BUILT_AT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bench client || echo +local)
cp target/release/queue-server target/release/queue-bench "$RUN/"
SERVER=$RUN/queue-server
BENCH=$RUN/queue-bench
KEY=$(python3 -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode())')
ETCD=127.0.0.1:23890

PIDS=()
NODE_PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=(); NODE_PIDS=()
}
trap stop EXIT

wait_http() { # wait_http URL
  for _ in $(seq 200); do curl -sf "$1" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "no answer from $1; logs in $RUN" >&2; exit 1
}

start_single() {
  stop
  cat >"$RUN/single.toml" <<TOML
[server]
max_logins_per_sec_per_core = 0
max_connections_per_ip = 100000
[log]
level = "warn"
TOML
  "$SERVER" --config "$RUN/single.toml" --cores 1 --listen 127.0.0.1:18400 --control 127.0.0.1:18401 \
    >>"$RUN/single.log" 2>&1 &
  PIDS+=($!)
  wait_http http://127.0.0.1:18401/healthz
}

# The owner of queue `default` as node 1 sees it (empty while there is none).
owner() {
  curl -sf http://127.0.0.1:18111/v1/stats 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); print((json.loads(t or "{}").get("cluster",{}).get("queues",{}).get("default",{}) or {}).get("owner") or "")'
}

start_cluster() { # start_cluster TTL
  stop
  rm -rf "$RUN/etcd"
  etcd --name bench --data-dir "$RUN/etcd" \
    --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls http://127.0.0.1:23900 --initial-advertise-peer-urls http://127.0.0.1:23900 \
    --initial-cluster bench=http://127.0.0.1:23900 >>"$RUN/etcd.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://$ETCD/health"
  for i in 1 2 3; do
    cat >"$RUN/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:181${i}0"
cores = 1
max_logins_per_sec_per_core = 0
max_connections_per_ip = 100000
[control]
listen = "127.0.0.1:181${i}1"
[tokens]
key = "$KEY"
[log]
level = "warn"
[cluster]
etcd = ["http://$ETCD"]
node_id = "node$i"
advertise_player = "127.0.0.1:181${i}0"
advertise_control = "127.0.0.1:181${i}1"
advertise_link = "127.0.0.1:181${i}2"
lease_ttl_secs = $1
recovery_window_secs = ${2:-30}
TOML
    "$SERVER" --config "$RUN/node$i.toml" >>"$RUN/node$i.log" 2>&1 &
    PIDS+=($!); NODE_PIDS+=($!)
  done
  for i in 1 2 3; do wait_http "http://127.0.0.1:181${i}1/healthz"; done
  for _ in $(seq 300); do [ -n "$(owner)" ] && break; sleep 0.05; done
  OWNER=$(owner)
  [ -n "$OWNER" ] || { echo "queue default got no owner; logs in $RUN" >&2; exit 1; }
  OWNER_I=${OWNER#node}
  OTHERS=()
  for i in 1 2 3; do [ "$i" = "$OWNER_I" ] || OTHERS+=("$i"); done
  # Every node must see the owner before the work starts (views are TTL/3 old at most).
  for i in 1 2 3; do
    for _ in $(seq 300); do
      curl -sf "http://127.0.0.1:181${i}1/v1/stats" | grep -q "\"owner\":\"$OWNER\"" && break
      sleep 0.05
    done
  done
}

bench() { # bench NAME ARGS...
  local name=$1; shift
  local cmd=("$BENCH" "$@" --json "$RUN/$name.json")
  echo "+ ${cmd[*]}"
  echo "${cmd[*]}" | sed "s#$BENCH#queue-bench#; s#$RUN/#RUN/#g" >"$RUN/$name.cmd"
  "${cmd[@]}" | tee "$RUN/$name.txt"
}

SINGLE=(--target 127.0.0.1:18400 --control 127.0.0.1:18401)
CLUSTER_T=127.0.0.1:18110,127.0.0.1:18120,127.0.0.1:18130
work() { # work LABEL START... : storm, steady, drain, each on fresh processes
  local l=$1; shift
  "$@"; local T=("${TARGET[@]}")
  bench "$l-storm" storm --users "$STORM" "${T[@]}"
  "$@"; T=("${TARGET[@]}")
  bench "$l-steady" steady --users "$USERS" --interval 1s --duration "$STEADY_FOR" --cmd position "${T[@]}"
  "$@"; T=("${TARGET[@]}")
  bench "$l-drain" drain --users "$DRAIN" --admit-rate "$DRAIN_RATE" "${T[@]}"
  "$@"; T=("${TARGET[@]}")
  bench "$l-drainmax" drain --users "$MAX" --admit-rate 1000000 "${T[@]}"
}
single_up() { start_single; TARGET=("${SINGLE[@]}"); }
cluster_up() {
  start_cluster 5
  TARGET=(--target "$CLUSTER_T" --control "127.0.0.1:181${OTHERS[0]}1")
}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
# Rounds alternate single and cluster, so a change in the box's load hits both.
if [ "${FAILOVER_ONLY:-0}" != 1 ]; then
  for k in $(seq "$ROUNDS"); do
    work "single-r$k" single_up
    work "cluster-r$k" cluster_up
  done
  stop
fi
WINDOW=${WINDOW:-30}

# Failover: ttl T, run r.
for ttl in ${TTLS:-5 2}; do
  for r in $(seq "$RUNS"); do
    start_cluster "$ttl" "$WINDOW"
    a=${OTHERS[0]}; b=${OTHERS[1]}
    pid=${NODE_PIDS[$((OWNER_I - 1))]}
    "$BENCH" storm --users $((FEED * 90)) --rate "$FEED" --no-leave --no-control --threads 1 \
      --target "127.0.0.1:181${a}0,127.0.0.1:181${b}0" >"$RUN/feed-$ttl-$r.txt" 2>&1 &
    FEEDER=$!
    sleep 1
    echo "+ failover ttl=$ttl run=$r: owner $OWNER (pid $pid), admits through node$a"
    python3 scripts/failover_probe.py "127.0.0.1:181${a}1" "$pid" --pre 4 --period 0.05 --max $((WINDOW + 60)) |
      tee "$RUN/failover-$ttl-$r.json"
    kill -TERM "$FEEDER" 2>/dev/null || true; wait "$FEEDER" 2>/dev/null || true
    stop
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

NAME=cluster-$DATE
[ "${FAILOVER_ONLY:-0}" = 1 ] && NAME=cluster-failover-w$WINDOW-$DATE
python3 - "$RUN" "$OUT" "$DATE" "$LOAD0" "$LOAD1" "$FEED" "$NAME" "$WINDOW" <<'PY'
import glob, json, os, subprocess, sys
run, out, date, load0, load1, feed, outname, window = sys.argv[1:9]
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
runs = {}
for f in sorted(glob.glob(run + "/*-storm.json") + glob.glob(run + "/*-steady.json") + glob.glob(run + "/*-drain.json") + glob.glob(run + "/*-drainmax.json")):
    r = json.load(open(f)); r["command"] = open(f[:-5] + ".cmd").read().strip()
    runs[os.path.basename(f)[:-5]] = r
fail = {}
for f in sorted(glob.glob(run + "/failover-*.json")):
    ttl, n = os.path.basename(f)[9:-5].split("-")
    txt = open(f).read().strip()
    fail.setdefault(int(ttl), []).append(json.loads(txt) if txt else {"error": "no output"})

def metric(r, what):
    if r is None: return None
    if what == "qps": return r["qps"]
    if what in ("p50", "p99"): return r["rtt"][what + "_us"]
    if what == "push_p50": return r["latencies"].get("position_push_lag", {}).get("p50_us")
    if what == "push_p99": return r["latencies"].get("position_push_lag", {}).get("p99_us")
rounds = sorted({int(n.split("-r")[1].split("-")[0]) for n in runs})
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
rows = [("storm logins/s", "storm", "qps"), ("steady answers/s", "steady", "qps"),
        ("steady rtt p50 us", "steady", "p50"), ("steady rtt p99 us", "steady", "p99"),
        ("drain (fixed rate) admitted/s delivered", "drain", "qps"), ("drain admit->admitted push p50 us", "drain", "p50"),
        ("drain admit->admitted push p99 us", "drain", "p99"),
        ("drain position push lag p50 us", "drain", "push_p50"), ("drain position push lag p99 us", "drain", "push_p99"),
        ("drainmax admitted/s delivered", "drainmax", "qps"), ("drainmax admit->admitted push p50 us", "drainmax", "p50"),
        ("drainmax admit->admitted push p99 us", "drainmax", "p99")]
md = [f"# A 3-node cluster against one node, and the failover gap ({date})", "",
      f"Machine: {os.cpu_count()} cores ({cpu}), "
      f"kernel {sh('uname -r')}, commit {os.environ['BUILT_AT']} (built at the start of the run), release build. "
      f"Load average (1/5/15 min) before: {load0}; after: {load1} (the box is shared with other helpers compiling).", "",
      ]
if runs:
    md += ["**Read this first:** this box has 2 cores. The 3 nodes (`--cores 1` each: an io loop and a core thread per node), "
          "etcd and the bench all share those 2 cores, against 1 node + bench for `single`. "
          "So the ratio cluster/single measures the **overhead of the node link and forwarding** "
          "(2 of 3 players' joins, pushes and every admit cross a second process) together with the single node's "
          "one-loop limit (see below), **not scale-out**: "
          "on 3 real boxes each node would have its own cores. Compare ratios within this run only. "
          "steady and drain run at a fixed offered rate, so their rates are 1.00 by construction: read their latencies; "
          "storm (all at once) and drainmax (admit calls as fast as they go) are the throughput figures.", "",
          f"Each cell lists the {len(rounds)} rounds in order (each round: single then cluster, every scenario on fresh processes).", "",
          "| metric | single | cluster | cluster / single | median ratio |", "|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    for label, sc, what in rows:
        ss = [metric(runs.get(f"single-r{k}-{sc}"), what) for k in rounds]
        cs = [metric(runs.get(f"cluster-r{k}-{sc}"), what) for k in rounds]
        rs = [c / s if s and c is not None else None for s, c in zip(ss, cs)]
        ok = sorted(r for r in rs if r is not None)
        med = f"**{ok[len(ok) // 2]:.2f}**" if ok else "-"
        md.append(f"| {label} | {', '.join(map(fmt, ss))} | {', '.join(map(fmt, cs))} | "
                  f"{', '.join('-' if r is None else f'{r:.2f}' for r in rs)} | {med} |")
    md += ["", "Errors and checks per run:", ""]
    for name, r in runs.items():
        ch = r.get("checks") or {}
        md.append(f"- {name}: errors {r['errors'] or 'none'}" + (f"; checks {'all ok' if all(ch.values()) else ch}" if ch else ""))
    md += ["", "Commands (`RUN/` = the run's temporary dir; single = 127.0.0.1:18400/18401, cluster nodes 127.0.0.1:181{1,2,3}0, "
           "control 181{1,2,3}1; drain's `--control` is a node that does not own `default`):", ""]
    for name, r in runs.items():
        if name.startswith(("single-r1-", "cluster-r1-")):  # the other rounds run the same commands
            md.append(f"- {name}: `{r['command']}`")
    md += ["", "Why the cluster can beat one node here: the single node runs `--cores 1` (one io loop thread + one core thread), "
           "so its player-side work can use about one of the 2 cores; the 3 nodes have 3 io loops and can use both cores. "
           "A ratio above 1 is this box's second core, not scale-out; below 1 is the link's cost.", ""]
if not fail:
    md += ["## Failover gap", "", "Not run here (`RUNS=0`): see the `cluster-failover-w*` result files.", ""]
else:
  md += [
       "## Failover gap", "",
       "What is measured: `scripts/failover_probe.py` calls `POST /v1/queues/default/admit {\"count\":1}` every 50 ms "
       "through the control port of a node that does not own `default`, and kill -9's the owner's process 4 s in. "
       "A success = answer 200 naming at least one admitted player; times are the probe's monotonic clock when the answer arrived. "
       "**gap = first success after the kill - last success before it.** "
       f"Meanwhile a feeder (`queue-bench storm --rate {feed} --no-leave --no-control --threads 1` through the two surviving nodes) "
       "logs in fresh players all along. Players on the surviving nodes keep their places (their links re-submit them "
       "to the new owner), and the new owner holds admission for the recovery window after taking over, so "
       "the gap = lease expiry (TTL + keep-alive phase) + the new owner's campaign tick + the recovery window "
       f"(`recovery_window_secs = {window}` in this run) + the survivor's view of the new owner (at most TTL/3 old) "
       "+ the next probe call (50 ms). Answers during the hold are 503 (\"admission waits out the recovery window\").", "",
       "| lease_ttl_secs | runs | gap s (each) | kill -> first admission s (each) | answers after the kill, before the first success |", "|---|---|---|---|---|"]
  for ttl in sorted(fail, reverse=True):
      rs = fail[ttl]
      gaps = ", ".join(str(r.get("gap_s")) for r in rs)
      k = ", ".join(str(r.get("kill_to_first_s")) for r in rs)
      ans = "; ".join(json.dumps(r.get("answers_after_kill")) for r in rs)
      md.append(f"| {ttl} | {len(rs)} | {gaps} | {k} | {ans} |")
envs = " ".join(f"{k}={os.environ[k]!r}" if " " in os.environ[k] else f"{k}={os.environ[k]}" for k in ("FAILOVER_ONLY", "TTLS", "WINDOW", "RUNS", "ROUNDS") if os.environ.get(k))
md += ["", f"Reproduce: `{envs + ' ' if envs else ''}scripts/bench-cluster.sh` (`QUICK=1` for tiny sizes)."]
open(f"{out}/{outname}.md", "w").write("\n".join(md) + "\n")
json.dump({"runs": runs, "failover": fail, "load_before": load0, "load_after": load1},
          open(f"{out}/{outname}.json", "w"), indent=1)
print("\n".join(md))
PY
echo "wrote $OUT/$NAME.md and .json (raw runs and logs in $RUN)"

#!/usr/bin/env bash
# The standard queue-bench suite on this machine, written to bench/results/<date>.json
# and bench/results/<date>.md (table with cores, kernel, commit).
#
#   scripts/bench.sh            # full suite (~3 minutes)
#   QUICK=1 scripts/bench.sh    # tiny sizes, to check the script itself
#
# Runs, each against a fresh server built with `--features count-alloc` (allocation
# counters on /metrics):
#   pinned:  server --cores 1 pinned to CPU 0 (taskset), bench pinned to CPU 1;
#   shared:  server --cores 2 on CPUs 0-1, bench on CPUs 0-1 as well;
# storm 10,000, steady 10,000 at 5 s, pingpong 200 conns, drain 10,000; then core
# 1,000,000 in process. steady and pingpong run with `--compare-echo`: after the real
# run the bench starts its own echo server (pinned where the server ran) and runs the
# same load against it, so every table row has its ceiling from the same run. Each
# run's full latency spectra (.hgrm, HdrHistogram's text format) are copied to
# bench/results/<date>-hgrm/.
# The server gets its own config: logins per second per loop unlimited (the default
# 20,000 would turn a big storm into RATE_LIMITED).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  USERS=200; STEADY_USERS=200; STEADY_FOR=3s; PP_FOR=2s; DRAIN=200; DRAIN_RATE=400; CORE_USERS=20000; WARMUP=0s
else
  USERS=10000; STEADY_USERS=10000; STEADY_FOR=20s; PP_FOR=10s; DRAIN=10000; DRAIN_RATE=2000; CORE_USERS=1000000; WARMUP=2s
fi
CONNS=${CONNS:-200}
PLAYER=127.0.0.1:${PLAYER_PORT:-17300}
CONTROL=127.0.0.1:${CONTROL_PORT:-17301}
DATE=$(date -u +%Y-%m-%d)
OUT=bench/results
RUN=$(mktemp -d)
mkdir -p "$OUT"

# Own target dir for the count-alloc server (others building the plain server in
# target/ must not swap the binary under us); binaries are copied before use.
cargo build --release --features count-alloc -p queue-server -q --target-dir target/bench-count-alloc
cargo build --release -p queue-bench -q
cp target/bench-count-alloc/release/queue-server "$RUN/queue-server"
cp target/release/queue-bench "$RUN/queue-bench"
SERVER=$RUN/queue-server
BENCH=$RUN/queue-bench
BUILD="release (profile debug=1, thin LTO) + count-alloc"

cat > "$RUN/server.toml" <<TOML
[server]
max_logins_per_sec_per_core = 0
[log]
level = "warn"
TOML

SERVER_PID=
stop() {
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop EXIT

# start_server CORES CPUS: a fresh server (empty queue, counters from 0).
start_server() {
  stop
  taskset -c "$2" "$SERVER" --config "$RUN/server.toml" --cores "$1" \
    --listen "$PLAYER" --control "$CONTROL" >>"$RUN/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "http://$CONTROL/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not come up; see $RUN/server.log" >&2; exit 1
}

# CPU seconds (user + system) the server has used so far.
cpu_s() {
  local pid=$SERVER_PID
  [ -n "$pid" ] || { echo 0; return; }
  awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$pid/stat"
}

# bench NAME CPUS THREADS ARGS...: one bench run, its command saved beside its JSON,
# and the server's CPU time over the run beside that.
bench() {
  local name=$1 cpus=$2 threads=$3; shift 3
  local c0 t0
  c0=$(cpu_s); t0=$(date +%s.%N)
  local cmd=(taskset -c "$cpus" "$BENCH" "$@" ${threads:+--threads "$threads"} --json "$RUN/$name.json")
  echo "+ ${cmd[*]}"
  echo "${cmd[*]}" | sed "s#$BENCH#queue-bench#; s#$RUN/#RUN/#g" > "$RUN/$name.cmd"
  "${cmd[@]}" | tee "$RUN/$name.txt"
  awk -v c0="$c0" -v c1="$(cpu_s)" -v t0="$t0" -v t1="$(date +%s.%N)" \
    'BEGIN { printf "%.3f %.3f\n", c1 - c0, t1 - t0 }' > "$RUN/$name.cpu"
}

T=(--target "$PLAYER" --control "$CONTROL" --server-build "$BUILD")
suite() { # suite LABEL SERVER_CORES SERVER_CPUS BENCH_CPUS BENCH_THREADS
  local l=$1 sc=$2 scpu=$3 bcpu=$4 bt=$5
  start_server "$sc" "$scpu"
  bench "$l-storm" "$bcpu" "$bt" storm --users "$USERS" "${T[@]}"
  local E=(--compare-echo --echo-cores "$sc" --echo-cpus "$scpu" --warmup "$WARMUP")
  start_server "$sc" "$scpu"
  bench "$l-steady" "$bcpu" "$bt" steady --users "$STEADY_USERS" --interval 5s --duration "$STEADY_FOR" --cmd position "${E[@]}" "${T[@]}"
  start_server "$sc" "$scpu"
  bench "$l-pingpong" "$bcpu" "$bt" pingpong --conns "$CONNS" --duration "$PP_FOR" "${E[@]}" "${T[@]}"
  start_server "$sc" "$scpu"
  bench "$l-drain" "$bcpu" "$bt" drain --users "$DRAIN" --admit-rate "$DRAIN_RATE" "${T[@]}"
  stop
}

suite pinned 1 0 1 1
suite shared 2 0,1 0,1 2
bench core 1 "" core --users "$CORE_USERS" --admit-rate 5000 --loops 2

python3 - "$RUN" "$OUT" "$DATE" "$BUILD" <<'PY'
import json, os, subprocess, sys, glob
run, out, date, build = sys.argv[1:5]
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
machine = {
    "date": date, "cores": os.cpu_count(), "kernel": sh("uname -r"),
    "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "commit": sh("git rev-parse --short HEAD") + (" (dirty tree)" if sh("git status --porcelain --untracked-files=no") else ""),
    "server_build": build, "io_driver": "io_uring" if not sh("grep -l 'legacy epoll' %s/server.log" % run) else "legacy epoll",
}
runs = {}
for f in sorted(glob.glob(run + "/*.json")):
    name = os.path.basename(f)[:-5]
    r = json.load(open(f)); r["command"] = open(f[:-5] + ".cmd").read().strip()
    cpu, wall = map(float, open(f[:-5] + ".cpu").read().split())
    # The echo phase of --compare-echo runs after the server's; the server idles then.
    r["server_cpu_s"], r["run_wall_s"] = cpu, wall - r["values"].get("echo_run_s", 0.0)
    runs[name] = r
json.dump({"machine": machine, "runs": runs}, open(f"{out}/{date}.json", "w"), indent=1)

def cell(v, fmt="{:.0f}"): return "-" if v is None else fmt.format(v)
rows = ["| run | what | rate /s | p50 us | p90 us | p99 us | p99.9 us | p99.99 us | max us | count | send lag p50 / p99 us | echo: rate /s, p50 / p99 us | errors | server CPU % of run | server allocs/request | allocs/push |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for name, r in runs.items():
    a = r.get("server_alloc") or {}
    errs = sum(r["errors"].values())
    checks = r.get("checks") or {}
    if checks: errs = f"{errs}; checks {'ok' if all(checks.values()) else 'FAILED'}"
    rt = r["rtt"]
    lag = r["latencies"].get("send_lag")
    lag = f"{lag['p50_us']:.0f} / {lag['p99_us']:.0f}" if lag else "-"
    e = r.get("echo")
    echo = f"{e['qps']:.0f}, {e['rtt']['p50_us']:.0f} / {e['rtt']['p99_us']:.0f}" if e else "-"
    rows.append(f"| {name} | {r['op']} | {r['qps']:.0f} | {rt['p50_us']:.0f} | {rt['p90_us']:.0f} | {rt['p99_us']:.0f} | {rt['p999_us']:.0f} | {rt.get('p9999_us', 0):.0f} | {rt['max_us']:.0f} | {rt['count']} | {lag} | {echo} | {errs} | {cell(100 * r['server_cpu_s'] / r['run_wall_s'] if r['run_wall_s'] and name != 'core' else None)} | {cell(a.get('per_request'), '{:.3f}')} | {cell(a.get('per_push'), '{:.3f}')} |")
md = [f"# queue-bench results {date}", "",
      f"Machine: {machine['cores']} cores ({machine['cpu']}), kernel {machine['kernel']}, commit {machine['commit']}, "
      f"server {machine['server_build']}, io driver {machine['io_driver']}.", "",
      "`pinned-*`: server `--cores 1` on CPU 0, bench on CPU 1. `shared-*`: server `--cores 2` and bench both on CPUs 0-1. "
      "Server CPU % = server CPU time over the whole bench run (setup included, the echo phase of `--compare-echo` not) / its wall time; 100 % = one core. "
      "Latencies are from each request's intended send time; send lag = actual - intended send time (the bench's own lateness).", ""] + rows + [""]
for name, r in runs.items():
    v = r.get("vs_echo")
    if v:
        md.append(f"- {name} / echo server, same run: rate {v['qps']:.2f}, rtt p50 {v['rtt_p50']:.2f}, "
                  f"p99 {v['rtt_p99']:.2f}, p99.9 {v['rtt_p999']:.2f}, p99.99 {v['rtt_p9999']:.2f}")
c = runs.get("core")
if c:
    v = c["values"]
    md.append(f"- core ({c['params']['users']} players): {v['joins_per_s']:.0f} joins/s; one tick p50 {c['rtt']['p50_us']:.0f} us, "
              f"one broadcast pass per loop p50 {c['latencies']['broadcast_pass_per_loop']['p50_us']:.0f} us / p99 {c['latencies']['broadcast_pass_per_loop']['p99_us']:.0f} us; "
              f"{v['core_bytes_per_player_rss']:.0f} B/player in the core; incremental resync: {v['resync_slices']:.0f} slices, "
              f"p50 {v['resync_slice_ms_p50']:.2f} / p99 {v['resync_slice_ms_p99']:.2f} / max {v['resync_slice_ms_max']:.2f} ms each")
md += ["", "Commands: see `command` of each run in the JSON; reproduce with `scripts/bench.sh`. "
       f"Per-second series (rate, p50, p99, max) are in the JSON (`series`); full spectra in `{date}-hgrm/`."]
open(f"{out}/{date}.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
mkdir -p "$OUT/$DATE-hgrm"
cp "$RUN"/*.hgrm "$OUT/$DATE-hgrm/"
echo "wrote $OUT/$DATE.json, $OUT/$DATE.md and $OUT/$DATE-hgrm/ (raw runs in $RUN)"

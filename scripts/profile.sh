#!/usr/bin/env bash
# Profile the server under one queue-bench scenario.
#
#   scripts/profile.sh SCENARIO [perf|callgrind]
#   SCENARIO: pingpong | steady | storm | drain
#
# The server (plain release build, debug symbols on) runs with --cores 1 pinned to
# CPU 0, the bench on CPU 1. With perf (default when `perf record` works here) it
# writes bench/results/profile-SCENARIO-perf-DATE.svg (flamegraph, inferno installed on
# first use) and .txt (top functions); with valgrind's callgrind (when perf does not
# work, or asked for) it writes profile-SCENARIO-callgrind-DATE.callgrind.out (open with kcachegrind or
# callgrind_annotate) and .txt. Each output has a .cmd beside it with the commands.
set -euo pipefail
cd "$(dirname "$0")/.."

SCEN=${1:?usage: scripts/profile.sh pingpong|steady|storm|drain [perf|callgrind]}
TOOL=${2:-auto}
PLAYER=127.0.0.1:${PLAYER_PORT:-17500}
CONTROL=127.0.0.1:${CONTROL_PORT:-17501}
DATE=$(date -u +%Y-%m-%d)
RUN=$(mktemp -d)
mkdir -p bench/results

if [ "$TOOL" = auto ]; then
  if perf record -q -o "$RUN/probe.data" true >/dev/null 2>&1; then TOOL=perf; else TOOL=callgrind; fi
fi
OUT=bench/results/profile-$SCEN-$TOOL-$DATE
# callgrind runs the server ~50x slower: smaller loads.
if [ "$TOOL" = callgrind ]; then S=10; else S=1; fi
case "$SCEN" in
  pingpong) ARGS=(pingpong --conns $((50 / S + 1)) --duration 10s) ;;
  steady)   ARGS=(steady --users $((5000 / S)) --interval 1s --duration 10s) ;;
  storm)    ARGS=(storm --users $((5000 / S))) ;;
  drain)    ARGS=(drain --users $((5000 / S)) --admit-rate $((2000 / S))) ;;
  *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac

cargo build --release -p queue-server -p queue-bench -q
cp target/release/queue-server target/release/queue-bench "$RUN/"
cat > "$RUN/server.toml" <<TOML
[server]
max_logins_per_sec_per_core = 0
$( [ "$TOOL" = callgrind ] && echo 'driver = "legacy"' )
[log]
level = "warn"
TOML
SERVER=("$RUN/queue-server" --config "$RUN/server.toml" --cores 1 --listen "$PLAYER" --control "$CONTROL")

case "$TOOL" in
  perf) PROF=(perf record -F 999 --call-graph dwarf,16384 -o "$RUN/perf.data" --) ;;
  callgrind) PROF=(valgrind --tool=callgrind --callgrind-out-file="$OUT.callgrind.out") ;;
  *) echo "unknown tool $TOOL" >&2; exit 2 ;;
esac
echo "+ taskset -c 0 ${PROF[*]} ${SERVER[*]}" | tee "$OUT.cmd"
taskset -c 0 "${PROF[@]}" "${SERVER[@]}" >"$RUN/server.log" 2>&1 &
PROF_PID=$!
trap 'kill -TERM $PROF_PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://$CONTROL/healthz" >/dev/null && break; sleep 0.1; done
BENCH=(taskset -c 1 "$RUN/queue-bench" "${ARGS[@]}" --target "$PLAYER" --control "$CONTROL" --threads 1)
echo "+ ${BENCH[*]}" | sed "s#$RUN/##g" | tee -a "$OUT.cmd"
"${BENCH[@]}" | tee "$OUT.bench.txt"
# Stop the server (perf's child, or valgrind itself) with SIGTERM so the profile is written.
SERVER_PID=$(pgrep -P "$PROF_PID" || echo "$PROF_PID")
kill -TERM "$SERVER_PID"
wait "$PROF_PID" || true
trap - EXIT

if [ "$TOOL" = perf ]; then
  command -v inferno-flamegraph >/dev/null || cargo install inferno --locked -q
  perf script -i "$RUN/perf.data" 2>/dev/null | inferno-collapse-perf > "$RUN/folded"
  inferno-flamegraph < "$RUN/folded" > "$OUT.svg"
  { perf report -i "$RUN/perf.data" --no-children --stdio --sort dso,sym -g none --percent-limit 0.5 2>/dev/null || true; } \
    | grep -v '^$' > "$OUT.txt" || true
  echo "+ perf script | inferno-collapse-perf | inferno-flamegraph > $OUT.svg" >> "$OUT.cmd"
  echo "wrote $OUT.svg, $OUT.txt, $OUT.cmd"
else
  { callgrind_annotate --inclusive=no "$OUT.callgrind.out" 2>/dev/null || true; } | sed -n 1,80p > "$OUT.txt"
  echo "+ callgrind_annotate $OUT.callgrind.out > $OUT.txt" >> "$OUT.cmd"
  echo "wrote $OUT.callgrind.out, $OUT.txt, $OUT.cmd"
fi

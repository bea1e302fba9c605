#!/usr/bin/env bash
# Issue 7 acceptance run: builds the release binary, then runs every attack of
# scripts/abuse.py against fresh servers on free 127.0.0.1 ports and prints the table
# (attack | answer | server alive | other clients served). Exits non-zero if any row is
# not as expected or a server died. Arguments go to abuse.py (--quick, --only 1,2b,p6).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
PIDFILE=$(mktemp /tmp/qs-abuse-pids.XXXXXX)
PY=
# Whatever happens to abuse.py, no server it started outlives this script.
cleanup() {
    if [ -n "$PY" ]; then
        kill -TERM "$PY" 2>/dev/null || true
    fi
    while read -r pid; do
        kill -9 "$pid" 2>/dev/null || true
    done <"$PIDFILE"
    rm -f "$PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# In the background so that a signal to this script runs the traps at once.
ABUSE_PIDFILE="$PIDFILE" python3 scripts/abuse.py --bin target/release/queue-server "$@" &
PY=$!
rc=0
wait "$PY" || rc=$?
PY=
exit "$rc"

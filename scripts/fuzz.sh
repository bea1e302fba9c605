#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz) of the frame decoder, the
# request parser and the control port's body parser. cargo-fuzz needs nightly-only
# flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them for this build only.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# A crash leaves its input in scripts/fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in frame_decoder request_parser control_body; do
  # New inputs go to corpus/ (not committed); seeds/ holds the committed starting set.
  mkdir -p scripts/fuzz/corpus/$target
  echo "== $target for ${SECS}s"
  cargo fuzz run --fuzz-dir scripts/fuzz "$target" \
    "scripts/fuzz/corpus/$target" "scripts/fuzz/seeds/$target" -- \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048
done

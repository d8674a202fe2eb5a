#!/usr/bin/env bash
# The long chaos run: `sluice chaos` for 30 minutes (DURATION) with every fault in turn, one
# every 15 s (about 120 faults), then its report, with the date, the commit and the fault
# timeline, written to docs/chaos-long-run.md (REPORT). Needs root (the partitions run backend
# nodes in network namespaces) and exits 1 if the run lost an acknowledged message, received an
# unknown one or broke a FIFO group's order. REPLICATION=async runs the queues ASYNC (the FIFO
# queue too, unless FIFO_REPLICATION=sync). KEEP=DIR keeps the run's data and logs in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
cargo build --locked --workspace --bins
# What was built and runs: the commit, and whether the work tree differed from it.
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"

DURATION="${DURATION:-30m}"
REPORT="${REPORT:-docs/chaos-long-run.md}"
if [ -n "${KEEP:-}" ]; then
  work="$KEEP"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
args=(chaos --fault mix --duration "$DURATION" --kill-every 15s --down-for 5s
      --partition-for 8s --pause-for 4s --base-port "${BASE_PORT:-7400}"
      --replication "${REPLICATION:-sync}")
[ -z "${FIFO_REPLICATION:-}" ] || args+=(--fifo-replication "$FIFO_REPLICATION")
status=0
"$CARGO_TARGET_DIR/debug/sluice" "${args[@]}" --dir "$work/chaos" > "$work/report.txt" 2> "$work/chaos.log" || status=$?
{
  echo "# The long chaos run"
  echo
  echo "Written by \`scripts/chaos-long.sh\` on $(date -u +%Y-%m-%d) at commit $commit;"
  echo "\`sluice ${args[*]}\` exited $status."
  echo
  echo '```'
  cat "$work/report.txt"
  echo '```'
  echo
  echo "## The faults, as they came"
  echo
  echo '```'
  grep '^chaos:' "$work/chaos.log" | sed "s#$work/##g"
  echo '```'
} > "$REPORT"
echo "report written to $REPORT"
exit "$status"

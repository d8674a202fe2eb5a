#!/usr/bin/env bash
# The whole comparison in one command: installs what is missing, then for each system starts
# it on loopback, runs workloads (a) to (d) from services/bench/workloads/, and stops it; then
# runs every system again at rates common to all ((b'), see equal_rates); finally writes
# results.md (one table per workload) and PNG charts into the output folder.
#
#   deploy/bench/compare.sh                      # every system
#   deploy/bench/compare.sh sluice rabbitmq-1    # some of them
#
# Systems: sluice (standalone), sluice-sqs (standalone, workload (a) over gRPC and over its SQS
# endpoint with the AWS SDK, one after the other), sluice-3 (the dev cluster, SYNC and ASYNC queues),
# rabbitmq-1 (quorum and classic queues), rabbitmq-3 (quorum), nats-1-always, nats-1-default,
# nats-3-always, nats-3-default (JetStream R1/R3, fsync on every write or the default sync).
#
# Environment: OUT (output folder, default bench-results/<time>), REPEATS (how many times the
# whole list of systems runs, one after the other, default 3; results.md shows each figure's
# median and range), WARMUP and DURATION (override the workloads' 10s and 60s), BACKLOG
# (workload (c), default 1000000), FILL_TIMEOUT (skip (c) for a system that cannot fill the
# backlog in this time, default 15m), SCALE=0 (leave out (f) to (i) on the standalone),
# SKIP_INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

ALL=(sluice sluice-sqs sluice-3 rabbitmq-1 rabbitmq-3 nats-1-always nats-1-default nats-3-always nats-3-default)
if [ $# -gt 0 ]; then SYSTEMS=("$@"); else SYSTEMS=("${ALL[@]}"); fi
for s in "${SYSTEMS[@]}"; do
    case " ${ALL[*]} " in *" $s "*) ;; *) echo "unknown system $s; known: ${ALL[*]}" >&2; exit 2 ;; esac
done

[ "${SKIP_INSTALL:-}" = 1 ] || deploy/bench/install.sh
RELEASE=${CARGO_TARGET_DIR:-target}/release
source deploy/bench/peers.sh

OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)}
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
# The system started last, stopped on the way out too: a run that fails half-way, even while
# the system starts, does not leave it behind, holding its ports and its data. A system that
# only partly started is stopped as far as it got (errexit is off under `||`).
current=
stop_current() {
    case $current in
    sluice | sluice-sqs | sluice-3) sluice_stop "$dir" ;;
    rabbitmq-1) rabbit_stop "$dir" 1 ;;
    rabbitmq-3) rabbit_stop "$dir" 3 ;;
    nats-*) nats_stop "$dir" "$nodes" ;;
    esac
    current=
}
trap 'stop_current || true; rm -rf "$WORK"' EXIT
WORKLOADS=services/bench/workloads
timing=()
[ -n "${WARMUP:-}" ] && timing+=(--warmup "$WARMUP")
[ -n "${DURATION:-}" ] && timing+=(--duration "$DURATION")

# Each repeat writes into its own folder, $OUT/run<N>, which `sluice-bench report` reads.
bench() {
    "$RELEASE/sluice-bench" run --out "$RUN_OUT" "$@"
}

# Runs the four workloads against one system (in the equal-rate pass, (b') alone): $1 is its
# name in the tables, the rest are sluice-bench driver flags.
workloads() {
    local system=$1 id
    shift
    if [ "$PHASE" = equal ]; then
        equal_rates "$system" "$@"
        return
    fi
    id=$(echo "$system" | tr -c 'a-zA-Z0-9\n' - | tr A-Z a-z)
    echo "== $system" >&2
    bench -w "$WORKLOADS/a-max-throughput.toml" --system "$system" "${timing[@]}" "$@" \
        --json >"$RUNS/a-$id.json"
    # (b) runs at half of what this same system consumed on (a).
    bench -w "$WORKLOADS/b-half-rate-latency.toml" --system "$system" "${timing[@]}" "$@" \
        --rate-from "$RUNS/a-$id.json" --rate-fraction 0.5 >/dev/null
    if ! bench -w "$WORKLOADS/c-backlog-drain.toml" --system "$system" "$@" \
        --backlog "${BACKLOG:-1000000}" --fill-timeout "${FILL_TIMEOUT:-15m}" \
        >/dev/null 2>"$WORK/c.err"; then
        # The error's own line, without any backtrace after it.
        reason=$(grep -m1 '^Error:' "$WORK/c.err" | sed 's/^Error: //')
        echo "- c-backlog-drain, $system, run $repeat: ${reason:-$(tail -1 "$WORK/c.err")}" \
            >>"$OUT/skipped.md"
    fi
    bench -w "$WORKLOADS/d-many-queues.toml" --system "$system" "${timing[@]}" "$@" >/dev/null
}

# (f) to (i): what more queues, more clients and larger messages cost. Sluice's own goals (issue
# 31 compares (f) with (d)), so they run on the standalone only; SCALE=0 leaves them out.
scale_workloads() {
    local system=$1 w
    shift
    [ "${SCALE:-1}" = 1 ] || return 0
    for w in f-10000-queues g-1000-clients h-64kib-messages i-1mib-messages; do
        echo "== $system: $w" >&2
        bench -w "$WORKLOADS/$w.toml" --system "$system" "${timing[@]}" "$@" >/dev/null ||
            echo "- $w, $system, run $repeat: failed (see the output above)" >>"$OUT/skipped.md"
    done
}

# (b'): one system at each common rate its maximum on (a) reaches, so p99s compare at one load.
equal_rates() {
    local system=$1 max rate
    shift
    max=$(awk -F'\t' -v s="$system" '$2 == s {print $1}' "$OUT/maxima.tsv")
    for rate in "${COMMON_RATES[@]}"; do
        if [ "${max:-0}" -lt "$rate" ]; then
            echo "- b-equal-rate-$rate, $system, run $repeat: its maximum on (a), ${max:-0} msgs/s, is below this rate" \
                >>"$OUT/skipped.md"
            continue
        fi
        echo "== $system at $rate msgs/s" >&2
        bench -w "$WORKLOADS/b-equal-rate.toml" --name "b-equal-rate-$rate" --rate "$rate" \
            --system "$system" "${timing[@]}" "$@" >/dev/null
    done
}

# The systems one after the other, then again: a slow spell of the machine falls on one run of
# several systems rather than on every run of one.
run_systems() {
    for repeat in $(seq 1 "$REPEATS"); do
        RUN_OUT=$OUT/run$repeat
        RUNS=$RUN_OUT/runs
        mkdir -p "$RUNS"
        for system in "${SYSTEMS[@]}"; do
            echo "== run $repeat of $REPEATS: $system" >&2
            dir=$WORK/$system
            # Each run starts from empty data directories.
            rm -rf "$dir"
            current=$system
            case $system in
            sluice)
                sluice_standalone_start "$dir"
                workloads "Sluice standalone" --driver sluice --url "$SLUICE_URLS"
                [ "$PHASE" = equal ] ||
                    scale_workloads "Sluice standalone" --driver sluice --url "$SLUICE_URLS"
                ;;
            sluice-sqs)
                # The same server and workload through both ports: what the SQS path costs.
                sluice_standalone_start "$dir"
                for driver in sluice sqs; do
                    [ $driver = sluice ] && label="Sluice standalone, gRPC" url=$SLUICE_URLS
                    [ $driver = sqs ] && label="Sluice standalone, SQS (AWS SDK)" url=$SLUICE_SQS_URLS
                    if [ "$PHASE" = equal ]; then
                        equal_rates "$label" --driver $driver --url "$url"
                        continue
                    fi
                    id=$(echo "$label" | tr -c 'a-zA-Z0-9\n' - | tr A-Z a-z)
                    bench -w "$WORKLOADS/a-max-throughput.toml" --system "$label" "${timing[@]}" \
                        --driver $driver --url "$url" --json >"$RUNS/a-$id.json"
                done
                ;;
            sluice-3)
                sluice_cluster_start "$dir"
                workloads "Sluice 3 nodes SYNC" --driver sluice --url "$SLUICE_URLS" --replication sync
                workloads "Sluice 3 nodes ASYNC" --driver sluice --url "$SLUICE_URLS" --replication async
                ;;
            rabbitmq-1)
                rabbit_start "$dir" 1
                workloads "RabbitMQ quorum, 1 node" --driver rabbitmq --url "$RABBIT_URLS" --queue-type quorum
                workloads "RabbitMQ classic, 1 node" --driver rabbitmq --url "$RABBIT_URLS" --queue-type classic
                ;;
            rabbitmq-3)
                rabbit_start "$dir" 3
                workloads "RabbitMQ quorum, 3 nodes" --driver rabbitmq --url "$RABBIT_URLS" --queue-type quorum
                ;;
            nats-*)
                nodes=${system#nats-}
                nodes=${nodes%%-*}
                sync=${system##*-}
                nats_start "$dir" "$nodes" "$sync"
                if [ "$sync" = always ]; then
                    label="NATS JetStream R$nodes, sync always"
                else
                    label="NATS JetStream R$nodes, default sync (acks before fsync)"
                fi
                workloads "$label" --driver nats --url "$NATS_URLS" --replicas "$nodes"
                ;;
            esac
            stop_current
        done
    done
}

PHASE=main run_systems
# The common rates of (b'), from every system's maximum on (a) (the median of its runs): the
# lowest half-maximum, which every system takes, and the median of the half-maximums.
python3 - "$OUT" >"$OUT/maxima.tsv" <<'EOF'
import glob, json, statistics, sys
rates = {}
for path in glob.glob(f"{sys.argv[1]}/run*/runs/a-*.json"):
    result = json.load(open(path))
    rates.setdefault(result["system"], []).append(result["consume_rate"])
for system, values in sorted(rates.items()):
    print(f"{round(statistics.median(values))}\t{system}")
EOF
mapfile -t COMMON_RATES < <(awk -F'\t' '{print int($1 / 2)}' "$OUT/maxima.tsv" | sort -n |
    awk '{h[NR] = $1} END {if (NR) {print h[1]; m = h[int((NR + 1) / 2)]; if (m != h[1]) print m}}')
[ ${#COMMON_RATES[@]} -eq 0 ] || PHASE=equal run_systems

{
    echo "# sluice-bench results"
    echo
    echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); $(date -u +%Y-%m-%d)."
    echo
    "$RELEASE/sluice-bench" report "$OUT"
    if [ -f "$OUT/skipped.md" ]; then
        echo "### Not run"
        echo
        cat "$OUT/skipped.md"
    fi
} >"$OUT/results.md"
echo "results: $OUT/results.md" >&2

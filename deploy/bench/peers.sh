# Starting and stopping each system under test on loopback, 1 node or 3. Sourced by
# deploy/bench/compare.sh; every function takes the folder that holds the system's data, logs
# and pids, so a run leaves nothing outside it.
#
# Ports: Sluice standalone 27070 (gRPC), 27071 (admin), 27072 (SQS); the Sluice dev cluster 27100-27159; RabbitMQ nodes 25672+i
# (AMQP) and 26000+i (Erlang distribution); NATS nodes 24222+i (clients) and 26222+i (routes).

# Empty where RabbitMQ is not installed (SKIP_INSTALL=1 for Sluice's rows alone): only its own
# functions use it.
RABBIT_SBIN=${RABBIT_SBIN:-$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin 2>/dev/null | tail -1 || true)}
RELEASE=${RELEASE:-target/release}
# The NATS server deploy/bench/install.sh puts in its virtualenv.
NATS_SERVER=${NATS_SERVER:-${SLUICE_BENCH_VENV:-$HOME/.cache/sluice-bench-venv}/bin/nats-server}

# Waits up to $2 seconds for "$1" (a command) to succeed.
wait_for() {
    local tries=$(( $2 * 4 ))
    until eval "$1" >/dev/null 2>&1; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "gave up waiting for: $1" >&2
            return 1
        fi
        sleep 0.25
    done
}

# --- Sluice ---------------------------------------------------------------------------------

sluice_standalone_start() { # dir
    mkdir -p "$1"
    # Standalone on loopback serves plain text and lets callers in without credentials; a CA or
    # a key left by a cluster run would ask for TLS, or for a key it does not know.
    unset SLUICE_CA_CERT SLUICE_ACCESS_KEY_ID SLUICE_SECRET_ACCESS_KEY
    "$RELEASE/sluice" standalone --data-dir "$1/data" --grpc-addr 127.0.0.1:27070 \
        --admin-addr 127.0.0.1:27071 --sqs-addr 127.0.0.1:27072 \
        --config deploy/bench/standalone.toml >"$1/sluice.log" 2>&1 &
    echo $! >"$1/pid"
    wait_for "'$RELEASE/sluice' --endpoint http://127.0.0.1:27070 queue list" 30
    SLUICE_URLS=http://127.0.0.1:27070
    SLUICE_SQS_URLS=http://127.0.0.1:27072
}

sluice_cluster_start() { # dir
    mkdir -p "$1"
    "$RELEASE/sluice" dev cluster up --dir "$1/cluster" --base-port 27100 --nodes 3 \
        >"$1/sluice.log" 2>&1 &
    echo $! >"$1/pid"
    wait_for "grep -q Ctrl-C '$1/sluice.log'" 120
    # The dev cluster serves TLS on certificates of its own CA; the CLI and the bench trust it,
    # and authenticate with the cluster's root key.
    export SLUICE_CA_CERT="$1/cluster/certs/ca.pem"
    SLUICE_ACCESS_KEY_ID=$(cut -d: -f1 "$1/cluster/certs/root.credentials")
    SLUICE_SECRET_ACCESS_KEY=$(cut -d: -f2 "$1/cluster/certs/root.credentials")
    export SLUICE_ACCESS_KEY_ID SLUICE_SECRET_ACCESS_KEY
    wait_for "'$RELEASE/sluice' --endpoint https://127.0.0.1:27110 queue list" 60
    # Both frontends; the bench spreads its clients over them.
    SLUICE_URLS=https://127.0.0.1:27110,https://127.0.0.1:27112
}

sluice_stop() { # dir
    local pid
    pid=$(cat "$1/pid")
    kill -INT "$pid" 2>/dev/null || true
    wait_for "! kill -0 $pid" 60 || kill -9 "$pid"
}

# --- RabbitMQ -------------------------------------------------------------------------------

# Runs rabbitmqctl against node $1 (1-based).
rabbitmqctl_n() {
    local node=$1
    shift
    HOME=$RABBIT_HOME "$RABBIT_SBIN/rabbitmqctl" -n "bench$node@localhost" "$@"
}

rabbit_node_start() { # dir node
    local dir=$1/node$2
    mkdir -p "$dir"
    echo "[]." >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((25671 + $2))
loopback_users = none
CONF
    (
        export HOME=$RABBIT_HOME
        export RABBITMQ_NODENAME=bench$2@localhost
        export RABBITMQ_DIST_PORT=$((25999 + $2))
        export RABBITMQ_MNESIA_BASE=$dir/mnesia
        export RABBITMQ_LOG_BASE=$dir/log
        export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
        export RABBITMQ_CONFIG_FILE=$dir/rabbitmq
        export RABBITMQ_PID_FILE=$dir/pid
        exec "$RABBIT_SBIN/rabbitmq-server" >"$dir/out.log" 2>&1
    ) &
    wait_for "rabbitmqctl_n $2 await_startup --timeout 5" 120
}

rabbit_start() { # dir nodes
    # The nodes of a cluster share an Erlang cookie through their (common) home folder.
    RABBIT_HOME=$1/home
    mkdir -p "$RABBIT_HOME"
    local i urls=""
    for i in $(seq 1 "$2"); do
        rabbit_node_start "$1" "$i"
        if [ "$i" -gt 1 ]; then
            rabbitmqctl_n "$i" stop_app >/dev/null
            rabbitmqctl_n "$i" join_cluster bench1@localhost >/dev/null
            rabbitmqctl_n "$i" start_app >/dev/null
        fi
        urls="$urls${urls:+,}amqp://guest:guest@127.0.0.1:$((25671 + i))/%2f"
    done
    RABBIT_URLS=$urls
}

rabbit_stop() { # dir nodes
    local i
    for i in $(seq "$2" -1 1); do
        rabbitmqctl_n "$i" stop >/dev/null 2>&1 || true
    done
}

# --- NATS -----------------------------------------------------------------------------------

nats_start() { # dir nodes sync_interval ("always" or "default")
    local i routes="" urls=""
    for i in $(seq 1 "$2"); do
        routes="$routes${routes:+, }nats-route://127.0.0.1:$((26221 + i))"
    done
    for i in $(seq 1 "$2"); do
        local dir=$1/node$i
        mkdir -p "$dir"
        {
            echo "server_name: bench$i"
            echo "listen: 127.0.0.1:$((24221 + i))"
            echo "jetstream {"
            echo "  store_dir: \"$dir/js\""
            [ "$3" = always ] && echo "  sync_interval: always"
            echo "}"
            if [ "$2" -gt 1 ]; then
                echo "cluster {"
                echo "  name: bench"
                echo "  listen: 127.0.0.1:$((26221 + i))"
                echo "  routes: [ $routes ]"
                echo "}"
            fi
        } >"$dir/nats.conf"
        "$NATS_SERVER" -c "$dir/nats.conf" >"$dir/out.log" 2>&1 &
        echo $! >"$dir/pid"
        urls="$urls${urls:+,}nats://127.0.0.1:$((24221 + i))"
    done
    for i in $(seq 1 "$2"); do
        wait_for "grep -q 'Server is ready' '$1/node$i/out.log'" 60
    done
    if [ "$2" -gt 1 ]; then
        # JetStream needs a meta leader before it takes streams.
        wait_for "grep -q -i 'JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader' '$1'/node*/out.log" 60
    fi
    NATS_URLS=$urls
}

nats_stop() { # dir nodes
    local i pid
    for i in $(seq 1 "$2"); do
        pid=$(cat "$1/node$i/pid")
        kill "$pid" 2>/dev/null || true
        wait_for "! kill -0 $pid" 30 || kill -9 "$pid"
    done
}

#!/usr/bin/env bash
# Runs one parley-load scenario against every available server in turn (Parley, Prosody,
# ejabberd), then prints one table side by side with ratios against Parley.
#
#   bench/run.sh idle --sessions 1000 --hold 30s
#   bench/run.sh login-storm --sessions 5000 --concurrency 50
#   bench/run.sh chat --sessions 1000 --rate 5000 --duration 30s
#
# Everything targets 127.0.0.1 and every step is bounded by `timeout`. SERVERS (default
# "parley prosody ejabberd") picks the servers; TLS=starttls|direct, MECH=SCRAM-SHA-256 (default).
# login-storm reuses at most STORM_USERS (default 1000) accounts round-robin.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOAD=$ROOT/target/release/parley-load
SCENARIO=${1:?usage: bench/run.sh idle|login-storm|chat [scenario args]}
shift
ARGS=("$@")
SERVERS=${SERVERS:-parley prosody ejabberd}
TLS=${TLS:-starttls}
MECH=${MECH:-SCRAM-SHA-256}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

[[ -x $LOAD ]] || { echo "build first: cargo build -p parley-bench --release" >&2; exit 1; }

sessions=
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [[ ${ARGS[i]} == --sessions ]] && sessions=${ARGS[i + 1]:-}
done
[[ $sessions =~ ^[0-9]+$ ]] || { echo "run.sh: --sessions N is required" >&2; exit 1; }
users=$sessions
[[ $SCENARIO == login-storm ]] && users=$((sessions < ${STORM_USERS:-1000} ? sessions : ${STORM_USERS:-1000}))

# ---------------------------------------------------------------------------------------------
# Parley: target/release/parley on loopback with a temp data dir and a test CA made with
# openssl; users are imported in one write with `parley user import`.
PARLEY_DIR=${PARLEY_RUN_DIR:-/tmp/parley-bench/parley}
parley_start() {
    [[ -x $ROOT/target/release/parley ]] || { echo "parley: build it with cargo build --release -p parley-server" >&2; return 1; }
    PORT=${PARLEY_PORT:-5222}
    mkdir -p "$PARLEY_DIR/certs"
    if [[ ! -f $PARLEY_DIR/certs/cert.pem ]]; then
        (
            cd "$PARLEY_DIR/certs"
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
                -subj "/CN=Parley bench CA" -keyout ca.key -out ca.crt 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
                -keyout key.pem -out leaf.csr 2>/dev/null
            printf 'subjectAltName=DNS:localhost\n' > ext.cnf
            openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
                -extfile ext.cnf -out leaf.crt 2>/dev/null
            cat leaf.crt ca.crt > cert.pem
        ) || return 1
    fi
    printf '%s\n' \
        '[server]' 'domain = "localhost"' "data_dir = \"$PARLEY_DIR/data\"" \
        '[tls]' "cert = \"$PARLEY_DIR/certs/cert.pem\"" "key = \"$PARLEY_DIR/certs/key.pem\"" \
        '[c2s]' "starttls_listen = [\"127.0.0.1:$PORT\"]" "direct_tls_listen = [\"127.0.0.1:$((PORT + 1))\"]" \
        'max_connections_per_ip = 1000000' \
        '[admin_http]' '[log]' 'level = "warn"' > "$PARLEY_DIR/parley.toml"
    parley_users "$users" || return 1
    "$ROOT/target/release/parley" --config "$PARLEY_DIR/parley.toml" serve > "$PARLEY_DIR/parley.log" 2>&1 &
    PID=$!
    CA=$PARLEY_DIR/certs/ca.crt
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.2
    done
    echo "parley: did not start; log:" >&2
    cat "$PARLEY_DIR/parley.log" >&2
    return 1
}
# Imports user1..userN (passN) once; an existing user file with as many accounts is reused.
parley_users() {
    local have=0
    [[ -f $PARLEY_DIR/data/users.toml ]] && have=$(grep -c '^\[\[user\]\]' "$PARLEY_DIR/data/users.toml")
    (( have >= $1 )) && return 0
    rm -rf "$PARLEY_DIR/data"
    seq 1 "$1" | awk '{print "user" $1 " pass" $1}' \
        | timeout 1800 "$ROOT/target/release/parley" --config "$PARLEY_DIR/parley.toml" user import - >/dev/null
}
parley_stop() { [[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
# ---------------------------------------------------------------------------------------------

prosody_start() {
    timeout 120 "$ROOT/bench/peers/prosody.sh" users "$users" || return 1
    timeout 60 "$ROOT/bench/peers/prosody.sh" start || return 1
    PORT=${PROSODY_PORT:-5322}; CA=${PROSODY_RUN_DIR:-/tmp/parley-bench/prosody}/certs/ca.crt
    PID=$("$ROOT/bench/peers/prosody.sh" pid)
}
prosody_users() { :; } # written before start, see prosody_start
prosody_stop() { timeout 30 "$ROOT/bench/peers/prosody.sh" stop; }

ejabberd_start() {
    timeout 120 "$ROOT/bench/peers/ejabberd.sh" start || return 1
    PORT=${EJABBERD_PORT:-5422}; CA=${EJABBERD_RUN_DIR:-/tmp/parley-bench/ejabberd}/certs/ca.crt
    PID=$("$ROOT/bench/peers/ejabberd.sh" pid)
}
ejabberd_users() { timeout 900 "$ROOT/bench/peers/ejabberd.sh" users "$1"; }
ejabberd_stop() { timeout 60 "$ROOT/bench/peers/ejabberd.sh" stop; }

declare -A RESULT
ran=()
for server in $SERVERS; do
    echo "=== $server" >&2
    PORT= CA= PID=
    if ! "${server}_start"; then echo "=== $server: not available, skipped" >&2; continue; fi
    if ! "${server}_users" "$users"; then echo "=== $server: user creation failed" >&2; "${server}_stop"; continue; fi
    port=$PORT
    [[ $TLS == direct ]] && port=$((PORT + 1))
    extra=()
    [[ $SCENARIO == idle ]] && extra=(--server-pid "$PID")
    out=$(timeout "$RUN_TIMEOUT" "$LOAD" --host 127.0.0.1 --port "$port" --tls "$TLS" --mech "$MECH" \
        --ca "$CA" --user-count "$users" "$SCENARIO" "${ARGS[@]}" "${extra[@]}" | tee /dev/stderr)
    "${server}_stop"
    line=$(grep '^RESULT ' <<<"$out" | tail -1)
    [[ -n $line ]] || { echo "=== $server: no result" >&2; continue; }
    ran+=("$server")
    for pair in ${line#RESULT }; do RESULT[$server.${pair%%=*}]=${pair#*=}; done
done

((${#ran[@]})) || { echo "no server produced a result" >&2; exit 1; }
keys=$(for k in "${!RESULT[@]}"; do echo "${k#*.}"; done | sort -u | grep -v '^scenario$')
echo
echo "scenario: $SCENARIO ${ARGS[*]}   (ratio = server / parley)"
printf '%-16s' metric; for s in "${ran[@]}"; do printf ' %15s' "$s"; done
for s in "${ran[@]}"; do [[ $s != parley ]] && printf ' %15s' "$s/parley"; done; echo
for k in $keys; do
    printf '%-16s' "$k"
    for s in "${ran[@]}"; do printf ' %15s' "${RESULT[$s.$k]:-na}"; done
    base=${RESULT[parley.$k]:-}
    for s in "${ran[@]}"; do
        [[ $s == parley ]] && continue
        v=${RESULT[$s.$k]:-}
        if [[ $base =~ ^[0-9.]+$ && $v =~ ^[0-9.]+$ ]] && awk "BEGIN{exit !($base > 0)}"; then
            printf ' %15s' "$(awk "BEGIN{printf \"%.2fx\", $v / $base}")"
        else
            printf ' %15s' "na"
        fi
    done
    echo
done

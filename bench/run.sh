#!/usr/bin/env bash
# Runs one parley-load scenario against every available server in turn (Parley, Prosody,
# ejabberd), then prints one table side by side with ratios against Parley.
#
#   bench/run.sh idle --sessions 1000 --hold 30s
#   bench/run.sh login-storm --sessions 5000 --concurrency 50
#   bench/run.sh chat --sessions 1000 --rate 5000 --duration 30s
#   bench/run.sh roster-login --sessions 2000 --group-size 500
#
# Everything targets 127.0.0.1 and every step is bounded by `timeout`. SERVERS (default
# "parley prosody ejabberd") picks the servers; prosody_mam and ejabberd_mam are the peers with
# their message archive (MAM) on, since Parley always archives. TLS=starttls|direct,
# MECH=SCRAM-SHA-256 (default). login-storm reuses at most STORM_USERS (default 1000) accounts
# round-robin. The server runs pinned to SERVER_CPUS (default 0) and parley-load to LOAD_CPUS
# (default 1) with taskset; PIN=0 turns pinning off. MD_OUT=file appends the table as Markdown.
# PARLEY_BIN and LOAD_BIN override the binaries (default: target/release/parley, parley-load).
# ROUNDS=N runs every server N times, in turn, and reports each figure's median (failure
# counts such as lost: their sum over the rounds).
# PARLEY_OUTBOUND_QUEUE sets [c2s] outbound_queue (unset: Parley's default, 16384).
# PROFILE=file records a perf profile of Parley (PROFILE_SECONDS after PROFILE_DELAY); PERF_ARGS adds
# perf record options, e.g. PERF_ARGS="--call-graph dwarf,16384" for call stacks.
# idle, roster-login and chat get the server's PID: chat reports cpu_us_per_msg, the server's CPU
# time (all threads) over the send window per delivered message, steadier than the rate itself.
# Accounts are in shared groups of GROUP_SIZE (default 500, or --group-size) members; only
# roster-login turns the shared groups on.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/certs.sh"
LOAD=${LOAD_BIN:-$ROOT/target/release/parley-load}
PARLEY_BIN=${PARLEY_BIN:-$ROOT/target/release/parley}
SCENARIO=${1:?usage: bench/run.sh idle|login-storm|chat|roster-login [scenario args]}
shift
ARGS=("$@")
SERVERS=${SERVERS:-parley prosody ejabberd}
TLS=${TLS:-starttls}
MECH=${MECH:-SCRAM-SHA-256}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}

[[ -x $LOAD ]] || { echo "build first: cargo build -p parley-bench --release" >&2; exit 1; }

sessions=
GROUP_SIZE=${GROUP_SIZE:-500}
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [[ ${ARGS[i]} == --sessions ]] && sessions=${ARGS[i + 1]:-}
    [[ ${ARGS[i]} == --group-size ]] && GROUP_SIZE=${ARGS[i + 1]:-}
done
[[ $GROUP_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: bad group size" >&2; exit 1; }
GROUPS_ON=0
[[ $SCENARIO == roster-login ]] && GROUPS_ON=1

# Server and load generator on separate cores (children inherit the affinity).
SERVER_PIN=() LOAD_PIN=()
if [[ ${PIN:-1} == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    SERVER_PIN=(taskset -c "${SERVER_CPUS:-0}") LOAD_PIN=(taskset -c "${LOAD_CPUS:-1}")
fi
[[ $sessions =~ ^[0-9]+$ ]] || { echo "run.sh: --sessions N is required" >&2; exit 1; }
users=$sessions
[[ $SCENARIO == login-storm ]] && users=$((sessions < ${STORM_USERS:-1000} ? sessions : ${STORM_USERS:-1000}))

# ---------------------------------------------------------------------------------------------
# Parley: target/release/parley on loopback with a temp data dir and a test CA made with
# openssl; users are imported in one write with `parley user import`.
PARLEY_DIR=${PARLEY_RUN_DIR:-/tmp/parley-bench/parley}
parley_start() {
    [[ -x $PARLEY_BIN ]] || { echo "parley: build it with cargo build --release -p parley-server" >&2; return 1; }
    PORT=${PARLEY_PORT:-5222}
    bench_certs "$PARLEY_DIR/certs" || return 1
    printf '%s\n' \
        '[server]' 'domain = "localhost"' "data_dir = \"$PARLEY_DIR/data\"" \
        '[tls]' "cert = \"$PARLEY_DIR/certs/cert.pem\"" "key = \"$PARLEY_DIR/certs/key.pem\"" \
        '[c2s]' "starttls_listen = [\"127.0.0.1:$PORT\"]" "direct_tls_listen = [\"127.0.0.1:$((PORT + 1))\"]" \
        'max_connections_per_ip = 1000000' ${PARLEY_OUTBOUND_QUEUE:+"outbound_queue = $PARLEY_OUTBOUND_QUEUE"} \
        '[admin_http]' '[log]' 'level = "warn"' > "$PARLEY_DIR/parley.toml"
    if ((GROUPS_ON)); then
        printf '[roster]\nshared_groups = [' >> "$PARLEY_DIR/parley.toml"
        for ((g = 1; g <= (users + GROUP_SIZE - 1) / GROUP_SIZE; g++)); do
            printf '{ group = "g%d", name = "Team %d" }, ' "$g" "$g"
        done >> "$PARLEY_DIR/parley.toml"
        printf ']\n' >> "$PARLEY_DIR/parley.toml"
    fi
    parley_users "$users" || return 1
    # Fresh database per run (users.toml, the account file, is kept): every run starts with an
    # empty archive, like the peers' fresh stores.
    rm -f "$PARLEY_DIR/data/parley.redb" "$PARLEY_DIR/data/parley.redb.index"
    "${SERVER_PIN[@]}" "$PARLEY_BIN" --config "$PARLEY_DIR/parley.toml" serve \
        > "$PARLEY_DIR/parley.log" 2>&1 &
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
# Writes user1..userN (passN, in group g<(n-1)/GROUP_SIZE+1>) once; an existing user file with
# as many accounts and the same group size is reused. By default the static directory's
# users.toml is written here with SCRAM-SHA-256 credentials only (salt, 4096 iterations,
# StoredKey, ServerKey: the same credentials Prosody's accounts get from prosody.sh), because
# `parley user import` also derives an argon2id hash per account (~0.2 s each on this machine:
# an hour for 19,000 accounts). PARLEY_IMPORT=1 uses `parley user import` (lines
# `userN passN groups=gK`) instead.
parley_users() {
    local have=0 spec="accounts $1 group-size $GROUP_SIZE"
    [[ -f $PARLEY_DIR/data/users.toml && -f $PARLEY_DIR/users.spec ]] \
        && have=$(grep -c '^\[\[user\]\]' "$PARLEY_DIR/data/users.toml")
    if (( have >= $1 )) && [[ $(cut -d' ' -f3- "$PARLEY_DIR/users.spec") == "group-size $GROUP_SIZE" ]]; then
        return 0
    fi
    rm -rf "$PARLEY_DIR/data" "$PARLEY_DIR/users.spec"
    mkdir -p "$PARLEY_DIR/data"
    if [[ ${PARLEY_IMPORT:-0} == 1 ]]; then
        seq 1 "$1" | awk -v g="$GROUP_SIZE" '{print "user" $1 " pass" $1 " groups=g" int(($1 - 1) / g) + 1}' \
            | timeout 3600 "$PARLEY_BIN" --config "$PARLEY_DIR/parley.toml" user import - >/dev/null \
            || return 1
    else
        timeout 600 python3 - "$PARLEY_DIR/data/users.toml" "$1" "$GROUP_SIZE" <<'PY' || return 1
import base64, hashlib, hmac, os, sys
path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
b64 = lambda b: base64.b64encode(b).decode()
with open(path + ".tmp", "w") as out:
    for n in range(1, count + 1):
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac("sha256", f"pass{n}".encode(), salt, 4096)
        stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
        server = hmac.new(salted, b"Server Key", "sha256").digest()
        out.write(f'[[user]]\nlocalpart = "user{n}"\ngroups = ["g{(n - 1) // size + 1}"]\n\n'
                  f'[user.scram_sha256]\nsalt = "{b64(salt)}"\niterations = 4096\n'
                  f'stored_key = "{b64(stored)}"\nserver_key = "{b64(server)}"\n\n')
os.chmod(path + ".tmp", 0o600)
os.rename(path + ".tmp", path)
PY
    fi
    echo "$spec" > "$PARLEY_DIR/users.spec"
}
# SIGTERM, then SIGKILL after 15 s: a server stuck in a fan-out storm must not stall the run.
parley_stop() {
    [[ -n ${PID:-} ]] || return 0
    kill "$PID" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$PID" 2>/dev/null && { echo "parley: still running 15 s after SIGTERM; killed" >&2; kill -9 "$PID"; }
    wait "$PID" 2>/dev/null || true
}
# ---------------------------------------------------------------------------------------------

prosody_start() {
    timeout 120 "$ROOT/bench/peers/prosody.sh" users "$users" || return 1
    timeout 60 "$ROOT/bench/peers/prosody.sh" groups "$users" "$((GROUPS_ON ? GROUP_SIZE : 0))" || return 1
    timeout 60 "${SERVER_PIN[@]}" "$ROOT/bench/peers/prosody.sh" start || return 1
    PORT=${PROSODY_PORT:-5322}; CA=${PROSODY_RUN_DIR:-/tmp/parley-bench/prosody}/certs/ca.crt
    PID=$("$ROOT/bench/peers/prosody.sh" pid)
}
prosody_users() { :; } # written before start, see prosody_start
prosody_stop() { timeout 30 "$ROOT/bench/peers/prosody.sh" stop; }
prosody_mam_start() { PROSODY_MAM=1 prosody_start; }
prosody_mam_users() { :; }
prosody_mam_stop() { prosody_stop; }

ejabberd_start() {
    EJABBERD_GROUPS=$GROUPS_ON timeout 120 "${SERVER_PIN[@]}" "$ROOT/bench/peers/ejabberd.sh" start || return 1
    PORT=${EJABBERD_PORT:-5422}; CA=${EJABBERD_RUN_DIR:-/tmp/parley-bench/ejabberd}/certs/ca.crt
    PID=$("$ROOT/bench/peers/ejabberd.sh" pid)
}
ejabberd_users() {
    timeout 900 "$ROOT/bench/peers/ejabberd.sh" users "$1" || return 1
    ((GROUPS_ON)) || return 0
    timeout 900 "$ROOT/bench/peers/ejabberd.sh" groups "$1" "$GROUP_SIZE"
}
ejabberd_stop() { timeout 60 "$ROOT/bench/peers/ejabberd.sh" stop; }
ejabberd_mam_start() { EJABBERD_MAM=1 ejabberd_start; }
ejabberd_mam_users() { ejabberd_users "$@"; }
ejabberd_mam_stop() { ejabberd_stop; }

declare -A RESULT RUNS
ran=()
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: bad ROUNDS" >&2; exit 1; }
# With ROUNDS > 1 every server runs once per round, in turn, so a slow spell of the machine hits
# all of them; each figure in the table is then the median of its rounds.
for ((round = 1; round <= ROUNDS; round++)); do
for server in $SERVERS; do
    echo "=== $server (round $round of $ROUNDS)" >&2
    PORT= CA= PID=
    if ! "${server}_start"; then echo "=== $server: not available, skipped" >&2; continue; fi
    if ! "${server}_users" "$users"; then echo "=== $server: user creation failed" >&2; "${server}_stop"; continue; fi
    port=$PORT
    [[ $TLS == direct ]] && port=$((PORT + 1))
    extra=()
    [[ $SCENARIO == idle || $SCENARIO == roster-login || $SCENARIO == chat ]] && extra=(--server-pid "$PID")
    profiler=
    if [[ -n ${PROFILE:-} && $server == parley ]] && command -v perf >/dev/null; then
        # Timer-based sampling (cpu-clock works in VMs without hardware counters), started
        # after PROFILE_DELAY seconds so the login ramp is left out.
        (sleep "${PROFILE_DELAY:-15}"; timeout 120 perf record ${PERF_ARGS:-} -e cpu-clock -F 999 -p "$PID" -o "$PROFILE" \
            -- sleep "${PROFILE_SECONDS:-10}") >/dev/null 2>&1 &
        profiler=$!
    fi
    out=$(timeout "$RUN_TIMEOUT" "${LOAD_PIN[@]}" "$LOAD" --host 127.0.0.1 --port "$port" --tls "$TLS" --mech "$MECH" \
        --ca "$CA" --user-count "$users" "$SCENARIO" "${ARGS[@]}" "${extra[@]}" | tee -a /dev/stderr)
    [[ -n $profiler ]] && wait "$profiler"
    "${server}_stop"
    line=$(grep '^RESULT ' <<<"$out" | tail -1)
    [[ -n $line ]] || { echo "=== $server: no result" >&2; continue; }
    [[ " ${ran[*]} " == *" $server "* ]] || ran+=("$server")
    for pair in ${line#RESULT }; do RUNS[$server.${pair%%=*}]+="${pair#*=} "; done
done
done

# The median of each figure over its rounds (the middle one, or the mean of the two middle
# ones), except counts of failures, which are summed so that no round's loss is hidden; a value
# that is not a number is taken from the last round.
for k in "${!RUNS[@]}"; do
    read -r -a values <<<"${RUNS[$k]}"
    if [[ ${values[*]} =~ ^[0-9.\ ]+$ && $k =~ \.(lost|failed|presences_missing)$ ]]; then
        RESULT[$k]=$(printf '%s\n' "${values[@]}" | awk '{sum += $1} END {print sum}')
    elif [[ ${values[*]} =~ ^[0-9.\ ]+$ ]]; then
        RESULT[$k]=$(printf '%s\n' "${values[@]}" | sort -g | awk '{v[NR] = $1}
            END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}')
    else
        RESULT[$k]=${values[-1]}
    fi
done

((${#ran[@]})) || { echo "no server produced a result" >&2; exit 1; }
keys=$(for k in "${!RESULT[@]}"; do echo "${k#*.}"; done | sort -u | grep -v '^scenario$')
echo
rounds_note=
((ROUNDS > 1)) && rounds_note=", median of $ROUNDS rounds"
echo "scenario: $SCENARIO ${ARGS[*]}   (ratio = server / parley$rounds_note)"
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

# With rounds, each round's headline figures too, so the spread behind a median is visible.
rounds_lines=()
if ((ROUNDS > 1)); then
    for s in "${ran[@]}"; do
        for k in delivered_per_s logins_per_s kib_per_session p99_ms; do
            [[ -n ${RUNS[$s.$k]:-} ]] && rounds_lines+=("$s $k by round: ${RUNS[$s.$k]% }")
        done
    done
    printf '%s\n' "${rounds_lines[@]}"
fi

# The same table in Markdown, for docs/benchmarks.md.
if [[ -n ${MD_OUT:-} ]]; then
    {
        echo
        echo "\`bench/run.sh $SCENARIO ${ARGS[*]}\` (ratio = peer / Parley$rounds_note)"
        echo
        printf '| metric |'; for s in "${ran[@]}"; do printf ' %s |' "$s"; done
        for s in "${ran[@]}"; do [[ $s != parley ]] && printf ' %s/parley |' "$s"; done; echo
        printf '|---|'; for s in "${ran[@]}"; do printf -- '---:|'; done
        for s in "${ran[@]}"; do [[ $s != parley ]] && printf -- '---:|'; done; echo
        for k in $keys; do
            printf '| %s |' "$k"
            for s in "${ran[@]}"; do printf ' %s |' "${RESULT[$s.$k]:-na}"; done
            base=${RESULT[parley.$k]:-}
            for s in "${ran[@]}"; do
                [[ $s == parley ]] && continue
                v=${RESULT[$s.$k]:-}
                if [[ $base =~ ^[0-9.]+$ && $v =~ ^[0-9.]+$ ]] && awk "BEGIN{exit !($base > 0)}"; then
                    printf ' %s |' "$(awk "BEGIN{printf \"%.2fx\", $v / $base}")"
                else
                    printf ' na |'
                fi
            done
            echo
        done
        if ((${#rounds_lines[@]})); then
            echo
            printf -- '- %s\n' "${rounds_lines[@]}"
        fi
    } >> "$MD_OUT"
fi

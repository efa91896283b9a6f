#!/usr/bin/env bash
# The login storm with LDAP accounts (issue 3): a private OpenLDAP slapd seeded with user1..userN
# (password passN), Parley with `[directory] backend = "ldap"` over StartTLS, and parley-load
# `login-storm` with SASL PLAIN (the only mechanism Parley offers for LDAP accounts). Then, for
# comparison on the same ports and certificates, Parley with local accounts (users.toml) once with
# PLAIN and once with SCRAM-SHA-256, so the LDAP cost is separated from the mechanism cost.
#
#   bench/ldap-storm.sh [login-storm args]    # default: --sessions 3000 --concurrency 50
#
# Environment: LDAP_USERS (accounts, default 1000), LDAP_PORT (3890), PARLEY_PORT (STARTTLS, 5322;
# direct TLS on PORT+1), TLS=starttls|direct, LDAP_BINDS ([ldap] max_concurrent_binds, default
# 16 as Parley's), LOCAL=0 (LDAP run only), PIN=0 (no taskset), SERVER_CPUS (Parley and slapd,
# default 0), LOAD_CPUS (1), LDAP_RUN_DIR (/tmp/parley-bench/ldap), PARLEY_BIN, LOAD_BIN.
# Figures (RESULT and SUMMARY lines, then a table) go to stdout, everything else to stderr.
# All on 127.0.0.1, all files in LDAP_RUN_DIR (not run.sh's directory, which another run may be
# using); the servers are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/certs.sh"
LOAD=${LOAD_BIN:-$ROOT/target/release/parley-load}
PARLEY_BIN=${PARLEY_BIN:-$ROOT/target/release/parley}
DIR=${LDAP_RUN_DIR:-/tmp/parley-bench/ldap}
USERS=${LDAP_USERS:-1000}
LDAP_PORT=${LDAP_PORT:-3890}
PORT=${PARLEY_PORT:-5322}
TLS=${TLS:-starttls}
ARGS=("$@")
((${#ARGS[@]})) || ARGS=(--sessions 3000 --concurrency 50)
BASE=dc=example,dc=com
SERVICE_DN=cn=parley,ou=services,$BASE
TICK=$(getconf CLK_TCK)

die() { echo "ldap-storm: $*" >&2; exit 1; }
[[ $USERS =~ ^[1-9][0-9]*$ ]] || die "LDAP_USERS must be a positive number"
[[ -x $PARLEY_BIN && -x $LOAD ]] || die "build first: cargo build --release -p parley-server -p parley-bench"
if [[ ! -x /usr/sbin/slapd || ! -x /usr/sbin/slapadd ]] || ! command -v ldapwhoami >/dev/null; then
    echo "ldap-storm: installing slapd and ldap-utils" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null \
        || die "apt-get install slapd ldap-utils failed"
fi
# Refuse busy ports rather than measure somebody else's server.
for p in "$LDAP_PORT" "$PORT" "$((PORT + 1))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use"; fi
done

# Servers on one core, the load generator on the other (as bench/run.sh): slapd shares the
# server core with Parley, as it would share a host's CPU budget.
SERVER_PIN=() LOAD_PIN=()
if [[ ${PIN:-1} == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    SERVER_PIN=(taskset -c "${SERVER_CPUS:-0}") LOAD_PIN=(taskset -c "${LOAD_CPUS:-1}")
fi

SLAPD_PID= PARLEY_PID= PARLEY_KIND= LOAD_PID=
# SIGTERM, then SIGKILL after 15 s, then reap: no server outlives the script.
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "ldap-storm: pid $pid ignored SIGTERM; killed" >&2; kill -9 "$pid"; }
    wait "$pid" 2>/dev/null || true
}
cleanup() { stop_pid "$LOAD_PID"; stop_pid "$PARLEY_PID"; stop_pid "$SLAPD_PID"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port pid log
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    cat "$3" >&2
    die "nothing listens on port $1; log above ($3)"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of the whole process

# Certificates: a throw-away CA and leaf whose IP SAN lets Parley verify slapd at 127.0.0.1.
bench_certs "$DIR/certs" || die "certificate generation failed"
CA=$DIR/certs/ca.crt

# slapd: mdb with the indexes a real directory has, ppolicy (Parley's default user_filter tests
# pwdAccountLockedTime, unknown without it) and syncprov (Parley's change feed), as in
# crates/parley-testkit/src/slapd.rs. Logging off: the figure is about logins, not syslog.
mkdir -p "$DIR/slapd"
printf 'bench-service-secret' > "$DIR/service-password"
chmod 600 "$DIR/service-password"
cat > "$DIR/slapd/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
moduleload syncprov
pidfile $DIR/slapd/slapd.pid
loglevel none
TLSCACertificateFile $CA
TLSCertificateFile $DIR/certs/cert.pem
TLSCertificateKeyFile $DIR/certs/key.pem
database mdb
suffix "$BASE"
rootdn "cn=admin,$BASE"
rootpw admin-secret
directory $DIR/slapd/db
maxsize 268435456
# slapd caps every search, paged or not, at 500 entries by default (error 4, sizeLimitExceeded,
# on Parley's full read); a directory admin grants the service account more.
limits dn.exact="$SERVICE_DN" size=unlimited time=unlimited
index objectClass eq
index uid eq,pres
index entryCSN,entryUUID eq
overlay ppolicy
overlay syncprov
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="$SERVICE_DN" read by self read by * none
EOF
# Seeded once per account count with slapadd (offline, seconds for thousands); {SSHA} passwords
# as a directory would hold them (slapd hashes nothing itself).
if [[ $(cat "$DIR/slapd/seeded" 2>/dev/null) != "$USERS" ]]; then
    rm -rf "$DIR/slapd/db" "$DIR/slapd/seeded" && mkdir -p "$DIR/slapd/db"
    python3 - "$USERS" "$BASE" "$SERVICE_DN" "$(cat "$DIR/service-password")" > "$DIR/slapd/seed.ldif" <<'PY'
import base64, hashlib, os, sys
count, base, service_dn, service_pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def ssha(pw):
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(pw.encode() + salt).digest() + salt).decode()
print(f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\no: Parley bench\ndc: example\n\n"
      f"dn: ou=people,{base}\nobjectClass: organizationalUnit\nou: people\n\n"
      f"dn: ou=services,{base}\nobjectClass: organizationalUnit\nou: services\n\n"
      f"dn: {service_dn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
      f"cn: parley\nuserPassword: {ssha(service_pw)}\n")
for n in range(1, count + 1):
    print(f"dn: uid=user{n},ou=people,{base}\nobjectClass: inetOrgPerson\nuid: user{n}\n"
          f"cn: User {n}\nsn: {n}\ndisplayName: User {n}\nmail: user{n}@localhost\n"
          f"userPassword: {ssha(f'pass{n}')}\n")
PY
    /usr/sbin/slapadd -q -f "$DIR/slapd/slapd.conf" -l "$DIR/slapd/seed.ldif" >/dev/null \
        || die "slapadd failed"
    echo "$USERS" > "$DIR/slapd/seeded"
fi
"${SERVER_PIN[@]}" /usr/sbin/slapd -f "$DIR/slapd/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" -d 0 \
    > "$DIR/slapd/slapd.log" 2>&1 &
SLAPD_PID=$!
wait_port "$LDAP_PORT" "$SLAPD_PID" "$DIR/slapd/slapd.log"
# One StartTLS bind as the last user proves seed, TLS and ACL before Parley depends on them.
LDAPTLS_CACERT=$CA ldapwhoami -x -ZZ -H "ldap://127.0.0.1:$LDAP_PORT" \
    -D "uid=user$USERS,ou=people,$BASE" -w "pass$USERS" >/dev/null || die "test bind to slapd failed"
SLAPD_VERSION=$(/usr/sbin/slapd -VV 2>&1 | sed -n 's/.*slapd \([0-9.]*\).*/\1/p' | head -1)

# Local accounts for the comparison runs: `parley user import` writes argon2id (for PLAIN) and
# SCRAM credentials, once per account count (~45 s for 1,000 here).
import_local_users() {
    [[ $(cat "$DIR/local-users.spec" 2>/dev/null) == "$USERS" ]] && return 0
    rm -rf "$DIR/data-local" && mkdir -p "$DIR/data-local"
    printf '[server]\ndomain = "localhost"\ndata_dir = "%s"\n' "$DIR/data-local" > "$DIR/import.toml"
    echo "ldap-storm: importing $USERS local accounts (argon2id, slow once)" >&2
    seq 1 "$USERS" | awk '{print "user" $1 " pass" $1}' \
        | timeout 3600 "$PARLEY_BIN" --config "$DIR/import.toml" user import - >/dev/null 2>&1 \
        || die "parley user import failed"
    echo "$USERS" > "$DIR/local-users.spec"
}

# Parley as bench/run.sh configures it, plus the directory section; admin_http on an ephemeral
# port so it never collides with another Parley's 5280. A fresh store per run.
parley_start() { # ldap|local
    local data=$DIR/data-$1 conf=$DIR/parley-$1.toml
    mkdir -p "$data"
    rm -f "$data/parley.redb" "$data/parley.redb.index"
    printf '%s\n' \
        '[server]' 'domain = "localhost"' "data_dir = \"$data\"" \
        '[tls]' "cert = \"$DIR/certs/cert.pem\"" "key = \"$DIR/certs/key.pem\"" \
        '[c2s]' "starttls_listen = [\"127.0.0.1:$PORT\"]" \
        "direct_tls_listen = [\"127.0.0.1:$((PORT + 1))\"]" \
        'max_connections_per_ip = 1000000' '[admin_http]' 'listen = "127.0.0.1:0"' \
        '[log]' 'level = "warn"' > "$conf"
    [[ $1 == ldap ]] && printf '%s\n' '[directory]' 'backend = "ldap"' '[ldap]' \
        "servers = [\"ldap://127.0.0.1:$LDAP_PORT\"]" 'starttls = true' "ca_file = \"$CA\"" \
        "bind_dn = \"$SERVICE_DN\"" "bind_password = \"file:$DIR/service-password\"" \
        "base_dn = \"ou=people,$BASE\"" "max_concurrent_binds = ${LDAP_BINDS:-16}" >> "$conf"
    "$PARLEY_BIN" --config "$conf" check-config >&2 || die "bad Parley config $conf"
    "${SERVER_PIN[@]}" "$PARLEY_BIN" --config "$conf" serve > "$DIR/parley-$1.log" 2>&1 &
    PARLEY_PID=$! PARLEY_KIND=$1
    wait_port "$PORT" "$PARLEY_PID" "$DIR/parley-$1.log"
    sleep 1 # let the LDAP directory finish its first full read before the storm
}

declare -a SUMMARY
storm() { # label mechanism
    local port=$PORT out line p0 s0 p1 s1
    [[ $TLS == direct ]] && port=$((PORT + 1))
    p0=$(cpu_ticks "$PARLEY_PID") s0=$(cpu_ticks "$SLAPD_PID")
    echo "=== $1: parley-load --mech $2 login-storm ${ARGS[*]}" >&2
    # Output to a file, then to stderr: `tee /dev/stderr` would reopen (and clobber) a log file
    # that stderr is redirected to; login-storm prints its figures at the end anyway. In the
    # background with `wait`, so that SIGTERM reaches the trap at once.
    timeout "${RUN_TIMEOUT:-900}" "${LOAD_PIN[@]}" "$LOAD" --host 127.0.0.1 --port "$port" --tls "$TLS" \
        --mech "$2" --ca "$CA" --user-count "$USERS" login-storm "${ARGS[@]}" > "$DIR/load.out" &
    LOAD_PID=$!
    wait "$LOAD_PID" || die "$1: parley-load failed"
    LOAD_PID=
    out=$(<"$DIR/load.out")
    echo "$out" >&2
    p1=$(cpu_ticks "$PARLEY_PID") s1=$(cpu_ticks "$SLAPD_PID")
    line=$(grep '^RESULT ' <<<"$out" | tail -1) || die "$1: no RESULT line"
    echo "$line"
    local log=$DIR/parley-$PARLEY_KIND.log
    if grep -q ERROR "$log"; then echo "ldap-storm: Parley logged errors, see $log" >&2; fi
    # CPU ms per successful login of Parley and of slapd (idle in the local runs), and Parley's
    # peak RSS in MiB.
    SUMMARY+=("$(awk -v l="$1" -v m="$2" -v r="${line#RESULT }" -v t="$TICK" -v pc=$((p1 - p0)) \
        -v sc=$((s1 - s0)) -v hwm="$(awk '/^VmHWM/ {print $2}' "/proc/$PARLEY_PID/status")" 'BEGIN {
            n = split(r, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); v[p[1]] = p[2] }
            d = v["ok"] > 0 ? v["ok"] : 1
            printf "%-6s %-14s %5s %6s %9s %8s %8s %10.2f %10.2f %8.1f", l, m, v["ok"], v["failed"],
                v["logins_per_s"], v["p50_ms"], v["p99_ms"], pc * 1000 / t / d, sc * 1000 / t / d,
                hwm / 1024 }')")
    echo "SUMMARY ${SUMMARY[-1]}"
}

parley_start ldap
storm ldap PLAIN
stop_pid "$PARLEY_PID"; PARLEY_PID=
if [[ ${LOCAL:-1} == 1 ]]; then
    import_local_users
    for mech in PLAIN SCRAM-SHA-256; do
        parley_start local
        storm local "$mech"
        stop_pid "$PARLEY_PID"; PARLEY_PID=
    done
fi

echo
echo "login-storm ${ARGS[*]}, $USERS accounts, TLS=$TLS, slapd $SLAPD_VERSION (pinned: ${SERVER_PIN[*]:-no})"
printf '%-6s %-14s %5s %6s %9s %8s %8s %10s %10s %8s\n' users mechanism ok failed logins/s p50_ms \
    p99_ms parley_ms slapd_ms peak_mib
printf '%s\n' "${SUMMARY[@]}"

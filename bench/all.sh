#!/usr/bin/env bash
# Regenerates every figure of docs/benchmarks.md in one command:
#
#   cargo build --release -p parley-server -p parley-bench && bench/all.sh
#
# Writes bench/results/{machine.txt,tables.md,log.txt,profile.txt}. Each step is bounded by
# run.sh's timeouts; the whole run takes about 40 minutes on 2 cores. STEPS picks steps by name
# (default: all of them, in this order).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
RUN=$ROOT/bench/run.sh
STEPS=${STEPS:-"idle5000 idle1000 chatmax chathalf storm ldapstorm roster idlemax profile"}
export MD_OUT=$OUT/tables.md
PEERS=${PEERS:-"parley prosody ejabberd"}
PEERS_MAM=${PEERS_MAM:-"parley prosody prosody_mam ejabberd ejabberd_mam"}
CHAT_SESSIONS=${CHAT_SESSIONS:-1000}
CHAT_SECONDS=${CHAT_SECONDS:-15s}

"$ROOT/bench/machine.sh" > "$OUT/machine.txt"
for step in $STEPS; do
    echo "##### $step $(date -u +%H:%M:%S)" >&2
    case $step in
        idle5000) SERVERS=$PEERS "$RUN" idle --sessions 5000 --hold 10s ;;
        idle1000) SERVERS=$PEERS "$RUN" idle --sessions 1000 --hold 10s ;;
        chatmax)
            SERVERS=$PEERS_MAM "$RUN" chat --sessions "$CHAT_SESSIONS" --rate max --window 2000 \
                --duration "$CHAT_SECONDS" | tee "$OUT/chatmax.txt" ;;
        chathalf)
            # Half of Parley's delivered rate at saturation, from the step above.
            rate=$(awk '$1 == "delivered_per_s" {printf "%d", $2 / 2}' "$OUT/chatmax.txt")
            [[ $rate =~ ^[1-9][0-9]*$ ]] || { echo "chathalf: no Parley saturation figure" >&2; continue; }
            SERVERS=$PEERS_MAM "$RUN" chat --sessions "$CHAT_SESSIONS" --rate "$rate" \
                --duration "$CHAT_SECONDS" ;;
        storm) SERVERS=$PEERS "$RUN" login-storm --sessions 3000 --concurrency 50 ;;
        # Parley only: LDAP accounts in a private slapd, beside local accounts (PLAIN and SCRAM).
        ldapstorm) "$ROOT/bench/ldap-storm.sh" --sessions 3000 --concurrency 50 | tee "$OUT/ldap-storm.txt" ;;
        roster) SERVERS=$PEERS "$RUN" roster-login --sessions 1000 --group-size 500 --settle 20s ;;
        # RLIMIT_NOFILE is 20000 (hard) for both the tool and the server: one descriptor per
        # session on each side, plus the runtime's own.
        idlemax) SERVERS=${IDLEMAX_SERVERS:-parley} "$RUN" idle --sessions 19000 --hold 10s --concurrency 200 ;;
        profile)
            PROFILE=$OUT/perf.data PROFILE_DELAY=12 PROFILE_SECONDS=10 SERVERS=parley MD_OUT=/dev/null \
                "$RUN" chat --sessions "$CHAT_SESSIONS" --rate max --window 2000 --duration 25s
            timeout 300 perf report -i "$OUT/perf.data" --no-children --sort symbol --percent-limit 0.7 \
                --stdio 2>/dev/null | grep -v '^$' > "$OUT/profile.txt"
            timeout 300 perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null \
                | grep -v '^$' | head -20 >> "$OUT/profile.txt" ;;
        *) echo "all.sh: unknown step $step" >&2 ;;
    esac
done 2>&1 | tee -a "$OUT/log.txt"

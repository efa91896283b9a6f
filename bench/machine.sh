#!/usr/bin/env bash
# Prints what docs/benchmarks.md records about the machine and the software under test:
# cores, RAM, kernel, the data disk's fsync latency (4 KiB write + fdatasync, 500 times, in
# the directory the servers write to), open-file limits, and the versions of every server.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-/tmp/parley-bench}
mkdir -p "$DIR"
echo "date:     $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu:      $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "ram:      $(free -g | awk '/^Mem:/{print $2}') GiB"
echo "kernel:   $(uname -r)"
echo "disk:     $(df -hT "$DIR" | awk 'NR==2{print $2 " on " $1}')"
timeout 120 python3 - "$DIR" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block, samples = b"x" * 4096, []
for _ in range(500):
    os.write(fd, block)
    t = time.perf_counter(); os.fdatasync(fd); samples.append((time.perf_counter() - t) * 1e6)
os.close(fd); os.unlink(path)
samples.sort()
q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]
print(f"fsync:    4 KiB append + fdatasync: p50 {q(0.5):.0f} us, p99 {q(0.99):.0f} us, max {samples[-1]:.0f} us")
PY
echo "nofile:   soft $(ulimit -Sn), hard $(ulimit -Hn), fs.nr_open $(cat /proc/sys/fs/nr_open)"
echo "parley:   git $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' + uncommitted work in crates/')"
echo "prosody:  $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || echo 'not installed'), $(lua5.4 -v 2>/dev/null || lua5.2 -v 2>/dev/null || echo lua)"
echo "ejabberd: $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null || echo 'not installed'), Erlang/OTP $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null)"
echo "rustc:    $(rustc --version 2>/dev/null)"

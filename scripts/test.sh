#!/usr/bin/env bash
# Runs every Parley test on a fresh Debian machine, installing what the tests need first:
# go-sendxmpp (the interoperability test's client from outside the Rust ecosystem).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v go-sendxmpp >/dev/null 2>&1 || missing+=(go-sendxmpp)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi

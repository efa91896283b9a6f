#!/usr/bin/env bash
# Runs every Parley test on a fresh Debian machine, installing what the tests need first:
# go-sendxmpp (the interoperability test's client from outside the Rust ecosystem), and
# OpenLDAP's slapd and ldap-utils (the LDAP tests run their own slapd on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v go-sendxmpp >/dev/null 2>&1 || missing+=(go-sendxmpp)
[ -x /usr/sbin/slapd ] || command -v slapd >/dev/null 2>&1 || missing+=(slapd)
command -v ldapmodify >/dev/null 2>&1 || missing+=(ldap-utils)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # slapd's postinst would otherwise create a database and start a system daemon; the tests
    # need neither (they generate their own configuration).
    echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Where the init system did start the packaged daemon anyway, stop it (only that one, by
    # its own pid file); the tests never use it.
    if [ -s /run/slapd/slapd.pid ]; then
        $sudo kill "$(cat /run/slapd/slapd.pid)" 2>/dev/null || true
    fi
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi

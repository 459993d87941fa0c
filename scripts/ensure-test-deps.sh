#!/usr/bin/env bash
# Make sure the system packages certbroker's test suite needs are installed.
#
# Silent and fast when everything is present. When something is missing:
#   - as root: `apt-get update` once, then install the missing Debian packages;
#   - otherwise: print the command to run and exit 1.
set -euo pipefail

# "binary:debian-package" pairs. The pebble package ships both pebble binaries; named and
# pdns_server (DNS-01 tests) live in /usr/sbin. caddy is the second CA (step-ca's ACME
# server, `acme_server`), run in a mount namespace of its own (unshare).
REQUIRED=(
    "pebble:pebble"
    "pebble-challtestsrv:pebble"
    "named:bind9"
    "nsupdate:bind9-dnsutils"
    "pdns_server:pdns-server"
    "chromium:chromium"
    "nginx:nginx"
    "sshd:openssh-server"
    "systemd-analyze:systemd"
    "caddy:caddy"
    "unshare:util-linux"
)
# PowerDNS loads its SQLite backend from this module (package pdns-backend-sqlite3).
GSQLITE3_GLOB="/usr/lib/*/pdns/libgsqlite3backend.so"
# The tests' throwaway PostgreSQL clusters (initdb is not on PATH in Debian).
INITDB_GLOB="/usr/lib/postgresql/*/bin/initdb"

# True if the binary is on PATH or in /usr/sbin or /sbin (a non-root PATH often lacks those).
have_binary() {
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

have_gsqlite3() {
    local so
    # shellcheck disable=SC2086 # the glob is meant to expand
    for so in $GSQLITE3_GLOB; do
        [[ -e "$so" ]] && return 0
    done
    return 1
}

have_initdb() {
    local found
    # shellcheck disable=SC2086 # the glob is meant to expand
    for found in $INITDB_GLOB; do
        [[ -x "$found" ]] && return 0
    done
    return 1
}

missing=()
add_missing() {
    local pkg
    for pkg in "${missing[@]+"${missing[@]}"}"; do
        if [[ "$pkg" == "$1" ]]; then
            return 0
        fi
    done
    missing+=("$1")
}

for entry in "${REQUIRED[@]}"; do
    binary="${entry%%:*}"
    package="${entry#*:}"
    if ! have_binary "$binary"; then
        add_missing "$package"
    fi
done
if ! have_gsqlite3; then
    add_missing "pdns-backend-sqlite3"
fi
if ! have_initdb; then
    add_missing "postgresql"
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

packages="${missing[*]}"
if [[ ${EUID} -ne 0 ]]; then
    echo "certbroker tests need the Debian package(s) ${packages}; install them with: sudo apt-get install ${packages}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "certbroker tests need the Debian package(s) ${packages}, but apt-get is not available on this system" >&2
    exit 1
fi

echo "certbroker tests: installing missing Debian package(s): ${packages}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y --no-install-recommends ${packages}

for entry in "${REQUIRED[@]}"; do
    binary="${entry%%:*}"
    if ! have_binary "$binary"; then
        echo "certbroker tests: '${binary}' is still missing after installing ${packages}" >&2
        exit 1
    fi
done
if ! have_gsqlite3; then
    echo "certbroker tests: ${GSQLITE3_GLOB} is still missing after installing ${packages}" >&2
    exit 1
fi

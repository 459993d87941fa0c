#!/usr/bin/env bash
# Make sure the system packages certbroker's test suite needs are installed.
#
# Silent and fast when everything is present. When something is missing:
#   - as root: `apt-get update` once, then install the missing Debian packages;
#   - otherwise: print the command to run and exit 1.
set -euo pipefail

# "binary:debian-package" pairs. The pebble package ships both pebble binaries.
REQUIRED=(
    "pebble:pebble"
    "pebble-challtestsrv:pebble"
)

missing=()
for entry in "${REQUIRED[@]}"; do
    binary="${entry%%:*}"
    package="${entry#*:}"
    if ! command -v "$binary" >/dev/null 2>&1; then
        already=0
        for pkg in "${missing[@]+"${missing[@]}"}"; do
            if [[ "$pkg" == "$package" ]]; then
                already=1
                break
            fi
        done
        if [[ $already -eq 0 ]]; then
            missing+=("$package")
        fi
    fi
done

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
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "certbroker tests: '${binary}' is still missing after installing ${packages}" >&2
        exit 1
    fi
done

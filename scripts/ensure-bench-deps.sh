#!/usr/bin/env bash
# The peers `make bench` measures certbroker against, installed when missing:
#   - Debian: lego, uacme (ACME clients), nginx and wrk (the HTTP-01 responder comparison),
#     time (GNU time: each tool's own peak memory);
#   - PyPI: certbot, in a virtual environment of its own (.bench/certbot-venv), so its
#     pins never touch certbroker's .venv.
# Silent and fast when everything is there. As root it installs; otherwise it prints the
# command to run and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CERTBOT_VENV="${ROOT}/.bench/certbot-venv"
REQUIRED=("lego:lego" "uacme:uacme" "nginx:nginx" "wrk:wrk")

have_binary() {
    command -v "$1" >/dev/null 2>&1 || PATH="/usr/sbin:/sbin:${PATH}" command -v "$1" >/dev/null 2>&1
}

missing=()
for entry in "${REQUIRED[@]}"; do
    if ! have_binary "${entry%%:*}"; then
        missing+=("${entry#*:}")
    fi
done

# GNU time measures each tool's own peak memory; `command -v time` would find bash's keyword.
[[ -x /usr/bin/time ]] || missing+=("time")

if [[ ${#missing[@]} -gt 0 ]]; then
    packages="${missing[*]}"
    if [[ ${EUID} -ne 0 ]]; then
        echo "certbroker benchmarks need the Debian package(s) ${packages}; install them with: sudo apt-get install ${packages}" >&2
        exit 1
    fi
    echo "certbroker benchmarks: installing missing Debian package(s): ${packages}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y --no-install-recommends ${packages}
fi

if [[ ! -x "${CERTBOT_VENV}/bin/certbot" ]]; then
    echo "certbroker benchmarks: installing certbot from PyPI into ${CERTBOT_VENV}" >&2
    python3 -m venv "${CERTBOT_VENV}"
    "${CERTBOT_VENV}/bin/python" -m pip install --quiet --upgrade pip
    "${CERTBOT_VENV}/bin/python" -m pip install --quiet certbot
fi

#!/usr/bin/env bash
# Everything the test suite needs, installed only where missing, so running it
# twice costs seconds: system packages (apt, as root), the Python venv with the
# package and its test extras, and the npm packages of the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The system packages the suite drives as real processes. Later issues add theirs here.
SYSTEM_PACKAGES=(nginx chromium openssl gettext-base redis-server)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing system packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  # Debian starts a daemon as a system service when its package is installed
  # (nginx on port 80). The tests start their own nginx on free ports, so no
  # service may start: policy-rc.d exit 101 forbids it for this install.
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  trap '((own_policy)) && rm -f /usr/sbin/policy-rc.d' EXIT
  echo "bootstrap: installing ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now nginx redis-server >/dev/null 2>&1 || true  # nor start at the next boot
  fi
fi

# The venv, reinstalled only when the package's metadata changed.
stamp=.venv/.bootstrap-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -x .venv/bin/python || ! -e $stamp ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.bootstrap-* && touch "$stamp"
fi

# React, react-dom and esbuild for the browser tests, exactly as locked.
lock=tests/browser/package-lock.json
npm_stamp=tests/browser/node_modules/.bootstrap-$(sha256sum < "$lock" | cut -c1-16)
if [[ ! -e $npm_stamp ]]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  touch "$npm_stamp"
fi

#!/usr/bin/env bash
# Make sure a Chromium the e2e browser tests can drive is installed: Debian's `chromium`
# package (Playwright's own browser download needs the internet, which CI does not have).
# Idempotent: does nothing when the executable is already there.
set -euo pipefail

CHROMIUM="${TINYEXP_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing at $CHROMIUM and apt-get is not available;" \
    "install Chromium and set TINYEXP_CHROMIUM to its path" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "installing chromium needs root (or sudo); run: apt-get install -y chromium" >&2
    exit 1
  fi
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "installed: $("$CHROMIUM" --version)"

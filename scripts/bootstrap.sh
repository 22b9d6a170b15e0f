#!/usr/bin/env bash
# Shared by scripts/demo and scripts/test: system packages (Debian/Ubuntu) and the virtualenv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VOUCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

apt_install() {
  # Install the Debian packages named, if any is missing and we may (root or sudo).
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || { echo "please install: ${missing[*]}" >&2; return 1; }
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_venv() {
  local extras="$1"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "vouch needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; "$PYTHON" -m venv "$VENV"; }
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT$extras" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import vouch" || { echo "installing vouch failed" >&2; exit 1; }
  # An editable install leaves vouch's own modules uncompiled, and with PYTHONDONTWRITEBYTECODE
  # set every vouch process would compile them again (about half a second of CPU each).
  "$VENV/bin/python" -m compileall -q -j 0 "$ROOT/src" >/dev/null || true
}

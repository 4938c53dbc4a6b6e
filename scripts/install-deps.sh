#!/usr/bin/env bash
# Installs qtune's build dependencies from Debian's packages (skips what is already there).
set -euo pipefail
pkgs="build-essential cmake pkg-config libopenblas-dev libomp-dev libpcre2-dev nlohmann-json3-dev libcli11-dev libgtest-dev libbenchmark-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

#!/usr/bin/env bash
# Installs the system packages the build links against (idempotent), and
# cargo-deny for the test suite. `scripts/deps.sh --system`: the system
# packages only (what building and running the service needs; bench/load.sh).
# ndarray-linalg uses the system OpenBLAS/LAPACK (`openblas-system`): the
# `openblas-static` backend would download OpenBLAS at build time.
set -euo pipefail
# nudge-sim --plot (plotters): fontconfig + freetype to render text, and a font.
packages=(libopenblas-dev pkg-config postgresql-client-common redis-tools libfontconfig-dev libfreetype-dev fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
# cargo-deny checks the licenses, bans and sources of Cargo.lock (see
# deny.toml). Built from crates.io, once (a few minutes on two cores).
if [ "${1:-}" = --system ]; then
  exit 0
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny" >&2
  cargo install --locked cargo-deny
fi

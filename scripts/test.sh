#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, formatting, lints,
# the dependency policy (deny.toml; advisories are not checked here: the
# RustSec database cannot be fetched), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot build gains nothing from incremental state, which roughly
# doubles the target directory; the free space goes in the log because a
# full disk once failed a run half way.
export CARGO_INCREMENTAL=0
df -h . | tail -1
scripts/deps.sh
scripts/services.sh
# The live page's browser check (tests/ui.rs): Debian's Chromium, and
# playwright-core from npm (tests/ui/package-lock.json); never a downloaded
# browser. Once both are here the check must run, not skip.
if ! [ -x /usr/bin/chromium ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium nodejs npm
fi
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
export NUDGE_UI_REQUIRED=1
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo deny check licenses bans sources
cargo test --workspace

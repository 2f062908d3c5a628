#!/usr/bin/env bash
# The test command: on a fresh Debian machine it installs what the tests need
# (system packages, the official `openai` Python client) and runs the whole
# suite. `--install-only` stops after installing (CI uses it before clippy).
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=false
[[ "${1:-}" == "--install-only" ]] && install_only=true

# System packages: cmake builds Pingora's zlib-ng (../shared/reference/pingora.md §1);
# redis-server backs the shared rate-limit tests; promtool (package prometheus)
# checks the /metrics output; python3-venv holds the openai client.
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The end-to-end tests drive the gateway with the official openai client.
venv=target/e2e-venv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check openai
fi
export VLLM_GATEWAY_PYTHON="$PWD/$venv/bin/python"

$install_only && exit 0
cargo test --all-targets

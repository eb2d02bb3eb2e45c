#!/usr/bin/env bash
# The local demo: the whole rendered pipeline DAG on this machine, on a tiny Llama.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
exec megapod run --local workflows/examples/tiny-local.yaml --runs-dir runs

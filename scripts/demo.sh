#!/usr/bin/env bash
# The local demo. Until `megapod run --local` lands, it validates and renders the reference spec.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=workflows/examples/llama-3.1-405b-p5.yaml
megapod validate "$spec"
megapod render "$spec" --out out/llama-405b
megapod lint out/llama-405b/workflows
echo
echo "Rendered workflows: $(pwd)/out/llama-405b/workflows"
echo "Chart values:       $(pwd)/out/llama-405b/chart-values.yaml"

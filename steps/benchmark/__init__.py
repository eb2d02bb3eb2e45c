"""The benchmark step: sweep concurrency x (ISL, OSL) with genai-perf or aiperf against a deployment.

`python -m steps.benchmark --spec SPEC --url HOST:PORT --tokenizer DIR --out DIR [--prometheus URL]`
writes one directory per sweep point (the tool's own exports, its log, `point.json`, and
`prometheus.json` when a Prometheus URL is given) plus `run.json` for the whole sweep.
"""

"""Issue 13.5: `megapod validate` refuses what helm or Kubernetes would refuse at deploy time.

Two tables. BAD: generated bad variants of the example specs, each refused with exit 2 and one
`error:` line naming the field, no traceback, within a time bound. GOOD: valid variants of every
example (ports, quantities, label keys, image references, cron strings, names at the length limit)
that validate accepts, each rendered by the real `helm template` of charts/triton-lws and every
object checked against the Kubernetes schemas (kubernetes-validate, strict) and the CRDs, as
tests/test_chart.py does.

The rules the spec applies, and the upstream text each follows:
- label keys/values: IsQualifiedName / IsValidLabelValue, k8s.io/apimachinery
  pkg/util/validation/validation.go at v0.31.0 (Kubernetes 1.31, KUBERNETES_VERSION);
- quantities: kubernetes.utils.parse_quantity (kubernetes-client/python utils/quantity.py, the
  installed `kubernetes` package) plus the chart's values.schema.json quantity pattern;
- image references: github.com/distribution/reference regexp.go at v0.6.0, digest as the chart's
  values.schema.json takes it (sha256);
- cron fields: github.com/robfig/cron/v3 spec.go and parser.go at v3.0.1 (Argo's CronWorkflow
  parser), bounds minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6 (no 7);
- duplicate keys: PyYAML 6.0 keeps the last silently; helm's sigs.k8s.io/yaml refuses them;
- release names: `triton-lws.fullname` in charts/triton-lws/templates/_helpers.tpl.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.test_chart import render, validate_object
from workflows.chart_values import CHART_NAME, MAX_FULLNAME, chart_values, release_fullname
from workflows.cli import app
from workflows.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))
REFERENCE = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"
# The longest name whose objects stay its own: <name>-triton-lws within the chart's cut.
LONGEST_NAME = MAX_FULLNAME - len(f"-{CHART_NAME}")
# validate is pure computation: anything slower than this is a hang or a blow-up.
SECONDS_PER_SPEC = 5.0

Change = Callable[[dict[str, Any]], None]


def put(dotted: str, value: Any) -> Change:
    """A change setting `dotted` (sections created as needed) to `value`."""

    def change(data: dict[str, Any]) -> None:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return change


def both(*changes: Change) -> Change:
    def change(data: dict[str, Any]) -> None:
        for one in changes:
            one(data)

    return change


# (id, change to the reference spec, text the one error line must contain: the field path)
BAD: list[tuple[str, Change, str]] = [
    ("http-port-high", put("serving.service.http_port", 70000), "serving.service.http_port"),
    ("grpc-port-zero", put("serving.service.grpc_port", 0), "serving.service.grpc_port"),
    ("metrics-port-negative", put("serving.service.metrics_port", -1), "serving.service.metrics_port"),
    ("ports-equal", put("serving.service.grpc_port", 8000), "serving: service.grpc_port"),
    ("ssh-port-equal", put("serving.ssh_port", 8002), "ssh_port"),
    ("replicas-int32", put("serving.replicas.max", 10**12), "serving.replicas.max"),
    ("replicas-1e20", put("serving.replicas.max", 1e20), "serving.replicas.max"),
    ("tp-1e20", put("build.tp", 1e20), "build.tp"),
    ("tp-huge-int", put("build.tp", 2**40), "build.tp*build.pp"),
    ("target-inf", put("serving.autoscaling.target", float("inf")), "serving.autoscaling.target"),
    ("target-zero", put("serving.autoscaling.target", 0), "serving.autoscaling.target"),
    ("mount-relative-up", put("cluster.volume_mount", "../../etc"), "cluster.volume_mount"),
    ("mount-dotdot", put("cluster.volume_mount", "/models/../etc"), "cluster.volume_mount"),
    ("mount-trailing-slash", put("cluster.volume_mount", "/models/"), "cluster.volume_mount"),
    ("mount-double-slash", put("cluster.volume_mount", "//models"), "cluster.volume_mount"),
    ("image-newline", put("serving.image", "ghcr.io/x/y:1\nrm -rf /"), "serving.image"),
    ("image-trailing-newline", put("serving.image", "ghcr.io/x/y:1\n"), "serving.image"),
    ("image-uppercase", put("serving.image", "ghcr.io/Org/Name:1"), "serving.image"),
    ("image-short-digest", put("serving.image", "ghcr.io/x/y@sha256:abc"), "serving.image"),
    ("source-trailing-newline", put("model.source", "/models/llama\n"), "model.source"),
    ("pipeline-image-space", put("images.pipeline", "ghcr.io/x/y :1"), "images.pipeline"),
    ("topology-space", put("serving.topology.key", "spine layer 3"), "serving.topology.key"),
    ("topology-leading-dash", put("serving.topology.key", "-a/b"), "serving.topology.key"),
    ("topology-empty-label", put("serving.topology.key", "a..b/c"), "serving.topology.key"),
    ("topology-name-64", put("serving.topology.key", "x" * 64), "serving.topology.key"),
    ("node-selector-key", put("cluster.node_selector", {"bad key!": "v"}), "cluster.node_selector"),
    ("node-selector-value", put("cluster.node_selector", {"ok": "bad value!"}), "cluster.node_selector"),
    (
        "monitoring-label-64",
        put("cluster.monitoring_labels", {"release": "x" * 64}),
        "cluster.monitoring_labels",
    ),
    ("toleration-key", put("cluster.tolerations", [{"key": "a b"}]), "cluster.tolerations.0.key"),
    (
        "toleration-value",
        put("cluster.tolerations", [{"key": "a", "operator": "Equal", "value": "x y"}]),
        "cluster.tolerations.0.value",
    ),
    ("cpu-lots", put("cluster.cpu", "lots"), "cluster.cpu"),
    ("memory-negative", put("cluster.memory", "-5Gi"), "cluster.memory"),
    ("memory-zero", put("cluster.memory", "0"), "cluster.memory"),
    ("shm-exa-suffix", put("cluster.shm_size", "1Ei"), "cluster.shm_size"),
    ("hugepages-space", put("cluster.hugepages_2mi", "5 Gi"), "cluster.hugepages_2mi"),
    ("cron-99", put("benchmark.schedules", ["99 99 99 99 99"]), "benchmark.schedules"),
    ("cron-dow-7", put("benchmark.schedules", ["0 3 * * 7"]), "benchmark.schedules"),
    ("cron-step-0", put("benchmark.schedules", ["*/0 * * * *"]), "benchmark.schedules"),
    ("cron-hour-25", put("benchmark.schedules", ["0 25 * * *"]), "benchmark.schedules"),
    ("cron-dom-32", put("benchmark.schedules", ["0 3 32 * *"]), "benchmark.schedules"),
    ("cron-dom-0", put("benchmark.schedules", ["0 3 0 * *"]), "benchmark.schedules"),
    ("cron-month-13", put("benchmark.schedules", ["0 3 * 13 *"]), "benchmark.schedules"),
    ("cron-backwards", put("benchmark.schedules", ["5-1 * * * *"]), "benchmark.schedules"),
    ("cron-name", put("benchmark.schedules", ["0 3 * * funday"]), "benchmark.schedules"),
    ("name-has-chart-name", put("name", "a-triton-lws"), "name"),
    ("name-too-long", put("name", "x" * (LONGEST_NAME + 1)), "name"),
    ("name-leading-digit", put("name", "1llama"), "name"),
    ("tp-string", put("build.tp", "8"), "build.tp"),
    ("replicas-string", put("serving.replicas.max", "2"), "serving.replicas.max"),
    ("streaming-string", put("benchmark.streaming", "yes"), "benchmark.streaming"),
    ("parameters-string", put("model.parameters_billion", "405"), "model.parameters_billion"),
    ("gpus-float", put("cluster.gpus_per_node", 8.0), "cluster.gpus_per_node"),
    ("bool-from-int", put("build.paged_context_fmha", 1), "build.paged_context_fmha"),
    ("surge-string", put("serving.rollout.max_surge", "1"), "serving.rollout.max_surge"),
    ("backend-int", put("backend", 5), "backend"),
    (
        "bench-isl-above-input",
        put("benchmark.sequences", [{"isl": 70000, "osl": 8}]),
        "benchmark.sequences.0.isl",
    ),
    (
        "bench-isl-osl-above-seq",
        put("benchmark.sequences", [{"isl": 65536, "osl": 70000}]),
        "benchmark.sequences.0.isl + osl",
    ),
    ("loadtest-isl-above-input", put("loadtest.isl", 70000), "loadtest.isl"),
    (
        "expect-above-max",
        both(put("serving.replicas.max", 2), put("loadtest.expect.groups_serving", 3)),
        "loadtest.expect.groups_serving",
    ),
]

# (id, text in the reference spec, its replacement, the field path): what data cannot express.
BAD_TEXT: list[tuple[str, str, str, str]] = [
    ("duplicate-name", "name: llama-405b\n", "name: llama-405b\nname: other\n", "duplicate key name"),
    ("duplicate-tp", "  tp: 8\n", "  tp: 8\n  tp: 16\n", "duplicate key build.tp"),
    ("yaml-1e20-replicas", "max: 2}", "max: 1e20}", "serving.replicas.max"),
]


# Generated: every counted field of the spec against every kind of value a careless edit gives it
# (a quoted number, a YAML boolean, a float, a huge and a non-finite number, zero or below its
# bound, a list). Each must be refused naming the field, whatever the field's own bound is.
COUNTED_FIELDS = (
    "build.tp", "build.pp", "build.max_batch_size", "build.max_num_tokens", "build.max_input_len",
    "build.max_seq_len", "cluster.gpus_per_node", "serving.replicas.max", "serving.startup_timeout_s",
    "serving.barrier_timeout_s", "loadtest.max_requests", "benchmark.request_count",
    "benchmark.point_timeout_s",
)  # fmt: skip
CARELESS_VALUES = {"quoted": "8", "boolean": True, "float": 8.5, "huge": 1e20, "infinite": float("inf"),
                   "zero": 0, "list": [8]}  # fmt: skip
GENERATED = [
    (f"{field}={kind}", put(field, value), field)
    for field in COUNTED_FIELDS
    for kind, value in CARELESS_VALUES.items()
]
BAD_VARIANTS = BAD + GENERATED


def refused_cleanly(path: Path, field: str) -> None:
    """Exit 2, exactly one `error: PATH: ...` line naming `field`, no traceback, in time."""
    started = time.monotonic()
    result = CliRunner().invoke(app, ["validate", str(path)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert field in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert elapsed < SECONDS_PER_SPEC, elapsed


def test_the_tables_are_large_enough() -> None:
    assert len(BAD_VARIANTS) + len(BAD_TEXT) >= 100
    names = [name for name, *_ in BAD_VARIANTS + BAD_TEXT]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("change", "field"), [c[1:] for c in BAD_VARIANTS], ids=[c[0] for c in BAD_VARIANTS])
def test_a_bad_variant_is_one_line_naming_the_field(tmp_path: Path, change: Change, field: str) -> None:
    data = yaml.safe_load(REFERENCE.read_text())
    change(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    refused_cleanly(path, field)


@pytest.mark.parametrize(("old", "new", "field"), [c[1:] for c in BAD_TEXT], ids=[c[0] for c in BAD_TEXT])
def test_a_bad_text_variant_is_one_line_naming_the_field(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    text = REFERENCE.read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    refused_cleanly(path, field)


# Valid choices for the fields the rules above constrain, applied to every example.
GOOD_CHANGES: dict[str, Change] = {
    "as-written": lambda data: None,
    "ports": both(
        put("serving.service.http_port", 1),
        put("serving.service.grpc_port", 65535),
        put("serving.service.metrics_port", 9400),
        put("serving.ssh_port", 1024),
    ),
    "quantities": both(
        put("cluster.cpu", "500m"),
        put("cluster.memory", "1.5Ti"),
        put("cluster.shm_size", "64Mi"),
        put("cluster.hugepages_2mi", "5120Mi"),
    ),
    "labels": both(
        put("serving.topology", {"key": "topology.k8s.aws/network-node-layer-1", "mode": "exclusive"}),
        put("cluster.node_selector", {"node.kubernetes.io/instance-type": "p5.48xlarge", "a_b.c": ""}),
        put("cluster.tolerations", [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}]),
        put("cluster.monitoring_labels", {"release": "kube-prometheus-stack"}),
    ),
    "images": both(
        put("serving.image", "registry.example.com:5000/team/triton-trtllm:0.1.0@sha256:" + "a" * 64),
        put("images.pipeline", "localhost:5000/megapod__pipeline-x.y:v1.2.3_rc1"),
    ),
    "cron": put(
        "benchmark.schedules",
        ["*/15 0-6,22-23 1-31/2 jan-dec mon-fri", "0 3 * * 6", "59 23 31 12 0", "0 3 ? * SUN"],
    ),
    "name-at-limit": put("name", "n" * LONGEST_NAME),
    "mount": put("cluster.volume_mount", "/mnt/models-v2"),
}


def good_variants() -> dict[str, dict[str, Any]]:
    out = {}
    for example in EXAMPLES:
        for name, change in GOOD_CHANGES.items():
            data = copy.deepcopy(yaml.safe_load(example.read_text()))
            change(data)
            out[f"{example.stem}:{name}"] = data
    return out


GOOD = good_variants()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_accepted_variant_renders_and_validates(name: str) -> None:
    """What validate accepts, the real helm renders (values.schema.json included) and every object
    passes the Kubernetes 1.31 schemas / CRDs; the objects carry this release's own names."""
    spec = parse_spec(GOOD[name])
    objects = render(chart_values(spec), spec.name, spec.cluster.namespace)
    assert objects
    for obj in objects:
        validate_object(obj)
        assert obj["metadata"]["name"].startswith(release_fullname(spec.name)), obj["metadata"]["name"]


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    """YAML's merge key `<<` (PyYAML 6.0 constructor.py flatten_mapping) may be overridden by the
    mapping's own key, and an anchored mapping reused twice is walked once: neither is a duplicate."""
    text = REFERENCE.read_text().replace(
        "name: llama-405b\n", "name: llama-405b\nx-defaults: &bench {isl: 128, osl: 128}\n", 1
    )
    path = tmp_path / "spec.yaml"
    reuse = "    - {<<: *bench, osl: 64}\n    - *bench\n"
    path.write_text(text.replace("    - {isl: 128, osl: 128}\n", reuse, 1))
    # Loaded without a duplicate-key error: the only problem left is the extra top-level key.
    refused_cleanly(path, "x-defaults: unknown key")

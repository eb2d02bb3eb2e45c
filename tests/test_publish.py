"""steps.publish: the inflight-batcher repository, parsed with Triton's ModelConfig protobuf, published
atomically to a directory and to a real moto S3 server behind a fault proxy. The model.py files
are small stand-ins for the serving image's templates."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from steps import publish as p
from steps.contract import CPU_POINTER
from steps.manifest import REPOSITORY_MANIFEST, read_manifest, repository_manifest_path, repository_problem
from tests.support.faultproxy import FaultProxy
from tests.support.triton import start_triton
from workflows.spec import Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_405B = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"


@pytest.fixture()
def templates(tmp_path: Path) -> Path:
    """Stand-ins for the image's all_models/inflight_batcher_llm model.py files."""
    root = tmp_path / "templates"
    for model in ("preprocessing", "postprocessing", "tensorrt_llm"):
        (root / model / "1").mkdir(parents=True)
        (root / model / "1" / "model.py").write_text(f"# stand-in for {model}/1/model.py\n")
    return root


def parsed(repo: Path, model: str) -> mc.ModelConfig:
    """config.pbtxt parsed with Triton's protobuf."""
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())


def params(config: mc.ModelConfig) -> dict[str, str]:
    """parameters as a plain dict."""
    return {k: v.string_value for k, v in config.parameters.items()}


def test_reference_repository_has_upstream_names_and_reference_parameters(templates, tmp_path):
    spec = load_spec(REFERENCE_405B)
    engines, tokenizer = tmp_path / "engines", tmp_path / "tok"
    repo = p.render_repository(spec, engines, tokenizer, templates, tmp_path / "repo")
    assert sorted(x.name for x in repo.iterdir()) == sorted(p.MODELS)
    trt = parsed(repo, "tensorrt_llm")
    assert trt.backend == "tensorrtllm" and trt.max_batch_size == spec.build.max_batch_size == 8
    assert trt.model_transaction_policy.decoupled and trt.dynamic_batching.max_queue_delay_microseconds == 0
    assert (
        params(trt) | {} == params(trt)
        and {
            "max_beam_width": "1",
            "gpt_model_path": str(engines),
            "enable_kv_cache_reuse": "false",
            "kv_cache_free_gpu_mem_fraction": str(spec.build.kv_cache_free_gpu_mem_fraction),
            "exclude_input_in_output": "true",
            "enable_chunked_context": "false",
            "gpt_model_type": "inflight_fused_batching",
        }.items()
        <= params(trt).items()
    )
    assert {"input_ids", "input_lengths", "request_output_len", "streaming", "end_id"} <= {
        t.name for t in trt.input
    }
    for model in ("preprocessing", "postprocessing"):
        config = parsed(repo, model)
        assert config.backend == "python" and config.max_batch_size == 8
        assert (
            params(config)["tokenizer_dir"] == str(tokenizer) and params(config)["tokenizer_type"] == "llama"
        )
        assert config.instance_group[0].count == 1
        assert (repo / model / "1" / "model.py").read_text().startswith("# stand-in")
    ensemble = parsed(repo, "ensemble")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    names = {t.name for t in ensemble.input}
    assert {
        "text_input",
        "max_tokens",
        "stream",
        "exclude_input_in_output",
        "min_tokens",
        "ignore_eos",
    } <= names
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
    ]
    assert ensemble.output[0].name == "text_output"


def test_spec_values_flow_into_the_configs(templates, tmp_path):
    data = yaml.safe_load(REFERENCE_405B.read_text())
    data["build"].update(
        max_batch_size=16,
        enable_kv_cache_reuse=True,
        enable_chunked_context=True,
        kv_cache_free_gpu_mem_fraction=0.85,
    )
    repo = p.render_repository(parse_spec(data), tmp_path / "e", tmp_path / "t", templates, tmp_path / "r")
    trt = parsed(repo, "tensorrt_llm")
    assert trt.max_batch_size == 16 and list(trt.dynamic_batching.preferred_batch_size) == [16]
    assert params(trt)["enable_kv_cache_reuse"] == "true" and params(trt)["enable_chunked_context"] == "true"
    assert params(trt)["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert all(parsed(repo, m).max_batch_size == 16 for m in p.MODELS)


def test_cpu_python_uses_the_python_backend(templates, tmp_path):
    spec = parse_spec(
        {
            "name": "tiny",
            "model": {"source": "/models/tiny", "parameters_billion": 0.001},
            "backend": "cpu-python",
            "build": {"tp": 1},
            "cluster": {"gpus_per_node": 1},
        }
    )
    repo = p.render_repository(spec, tmp_path / "e", tmp_path / "t", templates, tmp_path / "r")
    assert parsed(repo, "tensorrt_llm").backend == "python"
    assert (repo / "tensorrt_llm" / "1" / "model.py").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda r: (r / "tensorrt_llm" / "config.pbtxt").write_text(
                'name: "tensorrt_llm"\nbackend: tensorrtllm'
            ),
            "not a valid Triton ModelConfig",
        ),
        (
            lambda r: (r / "ensemble" / "config.pbtxt").write_text(
                (r / "ensemble" / "config.pbtxt").read_text().replace('key: "QUERY"', 'key: "QUERIES"')
            ),
            "input_map QUERIES=text_input",
        ),
        (
            lambda r: (r / "postprocessing" / "config.pbtxt").write_text(
                (r / "postprocessing" / "config.pbtxt")
                .read_text()
                .replace('name: "postprocessing"', 'name: "post"')
            ),
            "differs from its directory",
        ),
    ],
)
def test_a_bad_config_fails_validation(templates, tmp_path, damage, message):
    repo = p.render_repository(
        load_spec(REFERENCE_405B), tmp_path / "e", tmp_path / "t", templates, tmp_path / "r"
    )
    damage(repo)
    with pytest.raises(p.PublishError, match=message):
        p.validate_repository(repo)


def test_directory_publish_is_atomic_and_idempotent(templates, tmp_path, capsys):
    spec_path, engines, tok = str(REFERENCE_405B), tmp_path / "engines", tmp_path / "tok"
    engines.mkdir()
    tok.mkdir()
    dest, outputs = tmp_path / "vol" / "repos" / "llama-405b", tmp_path / "o"
    argv = [
        "--spec",
        spec_path,
        "--engines",
        str(engines),
        "--tokenizer",
        str(tok),
        "--dest",
        str(dest),
        "--templates",
        str(templates),
        "--outputs",
        str(outputs),
    ]
    assert p.main(argv) == 0
    assert (outputs / "repository").read_text() == str(dest)
    manifest = read_manifest(dest, path=repository_manifest_path(dest))
    assert manifest is not None and {f.path for f in manifest.files} >= {
        f"{m}/config.pbtxt" for m in p.MODELS
    }
    assert p.main(argv) == 0 and "already holds this repository" in capsys.readouterr().err
    assert sorted(x.name for x in dest.parent.iterdir()) == ["llama-405b"]  # no staging or old dirs left


def test_missing_templates_fail_cleanly(tmp_path, capsys):
    (tmp_path / "e").mkdir()
    (tmp_path / "t").mkdir()
    dest = tmp_path / "vol" / "repo"
    dest.parent.mkdir()
    code = p.main(
        [
            "--spec",
            str(REFERENCE_405B),
            "--engines",
            str(tmp_path / "e"),
            "--tokenizer",
            str(tmp_path / "t"),
            "--dest",
            str(dest),
            "--templates",
            str(tmp_path / "none"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "missing" in err and "--templates" in err and len(err.strip().splitlines()) == 1
    assert list(dest.parent.iterdir()) == []


@pytest.mark.integration
def test_s3_publish_survives_5xx_and_is_exact(moto_s3, templates, tmp_path, monkeypatch):
    """Real moto S3 behind a proxy answering 503/500 to every 3rd request: nothing lost or duplicated."""
    bucket = moto_s3.new_bucket()
    (tmp_path / "e").mkdir()
    (tmp_path / "t").mkdir()
    spec = load_spec(REFERENCE_405B)
    with FaultProxy(moto_s3.endpoint_url, fail_every=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result = p.publish(spec, tmp_path / "e", tmp_path / "t", f"s3://{bucket}/repos/llama", templates)
    assert proxy.failed > 0
    client = moto_s3.client()
    root = result.repository.removeprefix(f"s3://{bucket}/")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/")["Contents"]]
    expected = {f.path for f in result.manifest.files} | {REPOSITORY_MANIFEST}
    assert sorted(k[len(root) + 1 :] for k in keys) == sorted(expected)
    for entry in result.manifest.files:
        body = client.get_object(Bucket=bucket, Key=f"{root}/{entry.path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry.sha256
    pointer = yaml.safe_load(client.get_object(Bucket=bucket, Key="repos/llama/current.json")["Body"].read())
    assert pointer["repository"] == result.repository


@pytest.mark.integration
def test_published_repository_loads_in_real_tritonserver(tiny_model: Path, tmp_path: Path) -> None:
    """What publish leaves in place must be servable as is: no stray directory Triton takes for a model."""
    spec = load_spec(ROOT / "workflows/examples/tiny-local.yaml")
    dest = tmp_path / "repositories" / spec.name
    published = p.publish(spec, tiny_model, tiny_model, str(dest))
    assert Path(published.repository) == dest
    assert sorted(child.name for child in dest.iterdir() if child.is_dir()) == sorted(p.MODELS)
    server = start_triton(dest, tmp_path)
    try:
        ready = f"http://{server.http_url}/v2/models/ensemble/ready"
        with urllib.request.urlopen(ready, timeout=5) as answer:
            assert answer.status == 200
    finally:
        server.stop()


# --- trtllm-pytorch: the LLM-API model of tensorrtllm_backend v0.19.0 all_models/llmapi ---------

TINY_LOCAL = ROOT / "workflows" / "examples" / "tiny-local.yaml"
# tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/config.pbtxt, in its order.
LLMAPI_V0_19_INPUTS = [
    "text_input", "streaming", "sampling_param_beam_width", "sampling_param_temperature",
    "sampling_param_top_k", "sampling_param_top_p", "sampling_param_frequency_penalty",
    "sampling_param_presence_penalty", "sampling_param_max_tokens", "sampling_param_stop",
    "sampling_param_seed", "sampling_param_exclude_input_from_output", "return_finish_reason",
    "return_stop_reason", "return_cumulative_logprob",
]  # fmt: skip
LLMAPI_V0_19_OUTPUTS = ["text_output", "finish_reason", "stop_reason", "cumulative_logprob"]


def pytorch_spec(**build) -> Spec:
    """The tiny-local spec on backend trtllm-pytorch (its default scaling signal)."""
    data = yaml.safe_load(TINY_LOCAL.read_text())
    data["backend"] = "trtllm-pytorch"
    data["serving"]["autoscaling"].pop("metric")
    data["build"].update(build)
    return parse_spec(data)


@pytest.fixture()
def llmapi_templates(tmp_path: Path) -> Path:
    """Stand-ins for the image's all_models/llmapi (model.py imports helpers.py from its directory)."""
    version_dir = tmp_path / "llmapi" / "tensorrt_llm" / "1"
    version_dir.mkdir(parents=True)
    for name in ("model.py", "helpers.py"):
        (version_dir / name).write_text(f"# stand-in for tensorrt_llm/1/{name}\n")
    # upstream ships an example model.yaml; publish writes the spec's instead
    (version_dir / "model.yaml").write_text("model: TinyLlama/TinyLlama-1.1B-Chat-v1.0\n")
    return tmp_path / "llmapi"


def test_pytorch_backend_publishes_the_one_llmapi_model_configured_by_model_yaml(
    llmapi_templates, tiny_model, tmp_path
):
    """tensorrtllm_backend v0.19.0 all_models/llmapi: one python model `tensorrt_llm` (no ensemble),
    its config.pbtxt tensors, 1/model.py + helpers.py from the image, 1/model.yaml = LLM-API args
    (tensorrt_llm/1/model.py passes everything but triton_config to the LLM) from the spec."""
    spec = pytorch_spec(tp=2, pp=1, max_batch_size=6, max_num_tokens=384, kv_cache_free_gpu_mem_fraction=0.7)
    repo = p.render_repository(spec, tiny_model, tiny_model, llmapi_templates, tmp_path / "repo")
    assert sorted(child.name for child in repo.iterdir()) == ["tensorrt_llm"]
    config = parsed(repo, "tensorrt_llm")
    assert config.backend == "python" and not config.platform and not config.parameters
    assert [t.name for t in config.input] == LLMAPI_V0_19_INPUTS
    assert [t.name for t in config.output] == LLMAPI_V0_19_OUTPUTS
    assert [t.name for t in config.input if not t.optional] == ["text_input"]
    version_dir = repo / "tensorrt_llm" / "1"
    assert sorted(f.name for f in version_dir.iterdir()) == ["helpers.py", "model.py", "model.yaml"]
    assert (version_dir / "helpers.py").read_text() == "# stand-in for tensorrt_llm/1/helpers.py\n"
    options = yaml.safe_load((version_dir / "model.yaml").read_text())
    assert options["model"] == str(tiny_model) and options["backend"] == "pytorch"
    assert (options["tensor_parallel_size"], options["pipeline_parallel_size"]) == (2, 1)
    assert (options["max_batch_size"], options["max_num_tokens"]) == (6, 384)
    assert options["kv_cache_config"]["free_gpu_memory_fraction"] == 0.7
    # Strict configs (the launcher's --disable-auto-complete-config): model.py's auto_complete_config,
    # which copies triton_config into the config, never runs, so config.pbtxt says the same itself.
    assert options["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    assert config.max_batch_size == 0 and config.model_transaction_policy.decoupled


def test_pytorch_backend_loads_the_checkpoint_the_build_pointer_names(llmapi_templates, tiny_model, tmp_path):
    """--engines may be the build step's output for trtllm-pytorch (a pointer) or the checkpoint."""
    built = tmp_path / "built"
    built.mkdir()
    (built / CPU_POINTER).write_text(json.dumps({"checkpoint": str(tiny_model)}))
    repo = p.render_repository(pytorch_spec(), built, tiny_model, llmapi_templates, tmp_path / "repo")
    assert yaml.safe_load((repo / "tensorrt_llm/1/model.yaml").read_text())["model"] == str(tiny_model)
    with pytest.raises(p.PublishError, match="neither a checkpoint"):
        p.render_repository(pytorch_spec(), tmp_path, tiny_model, llmapi_templates, tmp_path / "r2")


def test_pytorch_backend_takes_its_templates_from_the_images_llmapi_dir(tiny_model, tmp_path, capsys):
    """Without --templates, trtllm-pytorch reads all_models/llmapi beside the engine templates."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(pytorch_spec().model_dump(mode="json")))
    code = p.main(["--spec", str(spec_file), "--engines", str(tiny_model), "--tokenizer", str(tiny_model),
                   "--dest", str(tmp_path / "out"), "--outputs", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert f"missing {p.IMAGE_LLMAPI_TEMPLATES}/tensorrt_llm/1/model.py" in err[0]


def test_pytorch_backend_refuses_fp8_from_a_plain_checkpoint(llmapi_templates, tiny_model, tmp_path, capsys):
    """No build stage runs for trtllm-pytorch, so publish checks what build would: FP8 weights come
    only from a ModelOpt-quantized checkpoint (hf_quant_config.json / quantization_config, as
    TensorRT-LLM's _torch/model_config.py reads them); nothing is published otherwise."""
    spec = pytorch_spec()
    spec = spec.model_copy(update={"build": spec.build.model_copy(update={"quantization": "fp8"})})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    code = p.main(["--spec", str(spec_file), "--engines", str(tiny_model), "--tokenizer", str(tiny_model),
                   "--templates", str(llmapi_templates), "--dest", str(tmp_path / "out"),
                   "--outputs", str(tmp_path / "o")])  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "needs an FP8 checkpoint" in line and "pre-quantized (ModelOpt)" in line
    assert not (tmp_path / "out").exists()


# --- issue 13.2: a damaged repository is never taken as complete ----------------------------------


def _publish_argv(templates: Path, tmp_path: Path, dest: Path | str) -> list[str]:
    """CLI arguments publishing the reference spec's repository to `dest`."""
    for name in ("engines", "tok"):
        (tmp_path / name).mkdir(exist_ok=True)
    return [
        "--spec", str(REFERENCE_405B), "--engines", str(tmp_path / "engines"), "--tokenizer",
        str(tmp_path / "tok"), "--dest", str(dest), "--templates", str(templates),
        "--outputs", str(tmp_path / "o"),
    ]  # fmt: skip


DAMAGES = {
    "truncated": lambda repo: (repo / "ensemble" / "config.pbtxt").write_text("name: 'ensemble'\n"),
    "same size, other bytes": lambda repo: _flip_last_byte(repo / "preprocessing" / "1" / "model.py"),
    "removed": lambda repo: (repo / "postprocessing" / "1" / "model.py").unlink(),
    "stray model": lambda repo: (repo / "stray" / "1").mkdir(parents=True)
    or (repo / "stray" / "config.pbtxt").write_text("name: 'stray'\n"),
}


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_repository_is_published_again_not_taken_as_complete(damage, templates, tmp_path, capsys):
    """Equal manifests but files that disagree with them: the rerun repairs the repository."""
    dest = tmp_path / "vol" / "repo"
    argv = _publish_argv(templates, tmp_path, dest)
    assert p.main(argv) == 0
    DAMAGES[damage](dest)
    assert repository_problem(dest) is not None
    capsys.readouterr()
    assert p.main(argv) == 0
    err = capsys.readouterr().err
    assert "already holds" not in err and "is damaged" in err
    assert repository_problem(dest) is None
    assert sorted(x.name for x in dest.parent.iterdir()) == ["repo"]


def test_leftovers_of_a_killed_publish_are_removed_by_the_next_run(templates, tmp_path):
    """A publish killed after staging (or between its two renames) leaves hidden siblings behind."""
    dest = tmp_path / "vol" / "repo"
    argv = _publish_argv(templates, tmp_path, dest)
    assert p.main(argv) == 0
    for leftover in (".repo.staging-0badf00d", ".repo.old-0badf00d"):
        (dest.parent / leftover / "ensemble").mkdir(parents=True)
        (dest.parent / leftover / "ensemble" / "config.pbtxt").write_text("partial")
    assert p.main(argv) == 0
    assert sorted(x.name for x in dest.parent.iterdir()) == ["repo"]


@pytest.mark.parametrize("where", ["dest", "parent"])
def test_a_dest_that_is_a_file_is_refused_in_one_line(where, templates, tmp_path, capsys):
    blocker = tmp_path / "vol"
    blocker.write_text("not a directory")
    dest = blocker if where == "dest" else blocker / "repo"
    assert p.main(_publish_argv(templates, tmp_path, dest)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and "Traceback" not in err[0]
    assert blocker.read_text() == "not a directory"


@pytest.mark.integration
def test_s3_manifest_is_uploaded_after_every_file_it_lists(moto_s3, templates, tmp_path, monkeypatch):
    """The order of S3 writes, seen through botocore's `provide-client-params.s3.<Operation>` events
    (botocore 1.44.8 botocore/client.py `_emit_api_params` emits them with the caller's parameters)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)  # the bucket's server, whatever ran before
    bucket = moto_s3.new_bucket()
    (tmp_path / "e").mkdir()
    (tmp_path / "t").mkdir()
    writes: list[str] = []
    make_client = p.s3_client

    def recording_client(*args, **kwargs):
        client = make_client(*args, **kwargs)
        for operation in ("PutObject", "CreateMultipartUpload"):
            client.meta.events.register(
                f"provide-client-params.s3.{operation}", lambda params, **_: writes.append(params["Key"])
            )
        return client

    monkeypatch.setattr(p, "s3_client", recording_client)
    spec = load_spec(REFERENCE_405B)
    result = p.publish(spec, tmp_path / "e", tmp_path / "t", f"s3://{bucket}/r", templates)
    root = result.repository.removeprefix(f"s3://{bucket}/")
    assert writes[-2:] == [f"{root}/{REPOSITORY_MANIFEST}", "r/current.json"]
    assert {w.removeprefix(f"{root}/") for w in writes[:-2]} == {f.path for f in result.manifest.files}


def test_a_damaged_llmapi_repository_is_repaired_too(llmapi_templates, tiny_model, tmp_path, caplog):
    """trtllm-pytorch's repository is one model and no ensemble (tensorrtllm_backend v0.19.0
    all_models/llmapi): the check follows the manifest, so the same damage is found there."""
    dest = tmp_path / "vol" / "repo"
    first = p.publish(pytorch_spec(), tiny_model, tiny_model, str(dest), llmapi_templates)
    assert repository_problem(dest) is None and not (dest / "ensemble").exists()
    options = dest / "tensorrt_llm" / "1" / "model.yaml"
    options.write_text(options.read_text().replace("pytorch", "tensorrt"))
    assert "model.yaml" in (repository_problem(dest) or "")
    with caplog.at_level("INFO", logger="megapod.publish"):
        again = p.publish(pytorch_spec(), tiny_model, tiny_model, str(dest), llmapi_templates)
    assert "is damaged" in caplog.text and "already holds" not in caplog.text
    assert again.manifest.digest() == first.manifest.digest() and repository_problem(dest) is None

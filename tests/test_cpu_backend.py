"""The CPU backend: numpy Llama decoding, and the real tritonserver serving it as `ensemble`."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from safetensors.numpy import load_file, save_file

from steps.contract import CPU_POINTER, LLMAPI
from steps.cpu_backend.inflight import decode_tokens_batch, word_list_tensor, word_lists_from_tensor
from steps.cpu_backend.llama import GenerationParams, LlamaModel, generate
from steps.cpu_backend.repository import DEFAULT_MAX_BATCH_SIZE
from steps.cpu_backend.textgen import IncrementalDecoder, TextCodec, parse_text_request
from steps.publish import CPU_TEMPLATES, render_repository
from steps.tritonenv import STUB_PATH_VAR, find_tritonserver, stub_environment, tritonserver_args
from tests.support.triton import TritonProcess, start_triton
from workflows.backend_metrics import KV_CACHE_METRICS, REQUEST_METRICS, TRTLLM_ENGINE_0_12
from workflows.spec import load_spec

PROMPT = "What is machine learning?"
REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def llama(tiny_model: Path) -> LlamaModel:
    return LlamaModel.load(tiny_model)


@pytest.fixture(scope="module")
def codec(tiny_model: Path) -> TextCodec:
    return TextCodec(tiny_model)


def expected_stream(codec: TextCodec, tokens: list[int]) -> list[str]:
    """The text deltas a streaming client must receive: one per token, plus any held-back UTF-8 tail."""
    decoder = IncrementalDecoder(codec)
    deltas = [decoder.push(t) for t in tokens]
    rest = decoder.flush()
    return [*deltas, rest] if rest else deltas


def expected_tokens(llama: LlamaModel, codec: TextCodec, fields: dict) -> list[int]:
    """What the server must generate for these request fields (same parser, same model, in-process)."""
    request = parse_text_request({k: np.array([v]) for k, v in fields.items()}, codec)
    return list(generate(llama, request.prompt_ids, request.params))


# --- numpy Llama -------------------------------------------------------------------------------


def test_forward_shapes_and_cache_growth(llama: LlamaModel, codec: TextCodec) -> None:
    ids = codec.encode(PROMPT)
    cache = llama.new_cache(32)
    logits = llama.forward(ids, cache)
    assert logits.shape == (len(ids), llama.config.vocab_size)
    assert np.isfinite(logits).all()
    assert cache.length == len(ids)
    assert llama.forward([5], cache).shape == (1, llama.config.vocab_size)
    assert cache.length == len(ids) + 1


def test_incremental_decoding_matches_full_recompute(llama: LlamaModel, codec: TextCodec) -> None:
    prompt = codec.encode(PROMPT)
    generated = list(generate(llama, prompt, GenerationParams(max_new_tokens=12, end_id=None)))
    assert len(generated) == 12
    full = llama.forward(prompt + generated, llama.new_cache())
    # Greedy: each generated token is the argmax of the full-sequence logits at the previous position.
    assert [int(t) for t in full[len(prompt) - 1 : -1].argmax(axis=-1)] == generated
    cache = llama.new_cache()
    steps = [llama.forward(prompt, cache)[-1]] + [llama.forward([t], cache)[-1] for t in generated[:-1]]
    np.testing.assert_allclose(np.stack(steps), full[len(prompt) - 1 : -1], rtol=1e-4, atol=1e-4)


def test_decoding_is_deterministic_and_prompt_dependent(llama: LlamaModel, codec: TextCodec) -> None:
    params = GenerationParams(max_new_tokens=8)
    first = list(generate(llama, codec.encode(PROMPT), params))
    assert first == list(generate(llama, codec.encode(PROMPT), params))
    assert first != list(generate(llama, codec.encode("Why is the sky blue?"), params))


def test_end_id_min_tokens_ignore_eos_bad_and_stop_words(llama: LlamaModel, codec: TextCodec) -> None:
    prompt = codec.encode(PROMPT)
    free = list(generate(llama, prompt, GenerationParams(max_new_tokens=6)))
    assert list(generate(llama, prompt, GenerationParams(max_new_tokens=6, end_id=free[0]))) == []
    at_least_one = list(
        generate(llama, prompt, GenerationParams(max_new_tokens=6, end_id=free[0], min_new_tokens=1))
    )
    assert len(at_least_one) >= 1 and at_least_one[0] != free[0]
    ignoring = list(
        generate(llama, prompt, GenerationParams(max_new_tokens=6, end_id=free[0], ignore_eos=True))
    )
    assert len(ignoring) == 6 and free[0] not in ignoring
    banned = list(generate(llama, prompt, GenerationParams(max_new_tokens=6, bad_words=((free[0],),))))
    assert banned[0] != free[0]
    stopped = list(
        generate(llama, prompt, GenerationParams(max_new_tokens=6, stop_words=(tuple(free[1:3]),)))
    )
    assert stopped == free[:3]


def test_rejects_requests_beyond_the_context_window(llama: LlamaModel) -> None:
    limit = llama.config.max_position_embeddings
    with pytest.raises(ValueError, match="exceeds the context window"):
        next(generate(llama, [1, 2, 3], GenerationParams(max_new_tokens=limit)))


def test_load_follows_the_build_steps_cpu_pointer(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / CPU_POINTER).write_text(json.dumps({"checkpoint": str(tiny_model), "backend": "cpu-python"}))
    assert LlamaModel.load(tmp_path).config.vocab_size == LlamaModel.load(tiny_model).config.vocab_size
    with pytest.raises(FileNotFoundError, match="neither a HF checkpoint"):
        LlamaModel.load(tmp_path / "elsewhere")


def test_load_names_a_missing_tensor(tiny_model: Path, tmp_path: Path) -> None:

    weights = load_file(str(tiny_model / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        LlamaModel.load(tmp_path)


def test_word_lists_use_trtllm_flat_ids_and_cumulative_offsets(codec: TextCodec) -> None:
    hello, world_foo = (
        codec.encode("Hello", add_special_tokens=False),
        codec.encode(" world foo", add_special_tokens=False),
    )
    tensor = word_list_tensor(
        codec, np.array([[b"Hello", b" world foo"], [b"", b"Hello"]], dtype=np.object_), 2
    )
    assert tensor.dtype == np.int32 and tensor.shape == (2, 2, len(hello) + len(world_foo))
    assert tensor[0, 0].tolist() == hello + world_foo
    assert tensor[0, 1, :2].tolist() == [len(hello), len(hello) + len(world_foo)]
    assert word_lists_from_tensor(tensor[:1]) == (tuple(hello), tuple(world_foo))
    assert word_lists_from_tensor(tensor[1:]) == (tuple(hello),)  # empty words are dropped
    assert word_lists_from_tensor(word_list_tensor(codec, None, 1)) == ()


def test_postprocessing_decodes_up_to_sequence_length(codec: TextCodec) -> None:
    ids = codec.encode("Hello world", add_special_tokens=False)
    batch = np.array([[[*ids, *ids]]], dtype=np.int32)  # the tail must be cut at SEQUENCE_LENGTH
    assert decode_tokens_batch(codec, batch, np.array([[len(ids)]])) == [b"Hello world"]


# --- the Triton environment -------------------------------------------------------------------


def test_tritonserver_args_bind_loopback_and_stub_env_carries_import_path(tmp_path: Path) -> None:
    install = find_tritonserver()
    args = tritonserver_args(tmp_path, 1, 2, 3, install=install, extra=("--log-verbose=1",))
    assert args[0] == str(install.binary)
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--exit-timeout-secs=5",
        "--disable-auto-complete-config",
        "--allow-metrics=true",
        f"--model-repository={tmp_path}",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
    ):
        assert flag in args
    assert args[-1] == "--log-verbose=1"
    env = stub_environment(install, {"LD_LIBRARY_PATH": "/x"})
    assert env["LD_LIBRARY_PATH"].split(":") == [str(install.libs), "/x"]
    assert str(install.site_packages) in env[STUB_PATH_VAR].split(":")


# --- the real server --------------------------------------------------------------------------


def sse_events(server: TritonProcess, payload: dict) -> list[dict]:
    """POST to generate_stream and parse every `data:` event."""
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/ensemble/generate_stream",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        body = response.read().decode()
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def generate_once(server: TritonProcess, payload: dict) -> dict:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/ensemble/generate", data=json.dumps(payload).encode()
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


@pytest.mark.integration
def test_sse_streams_one_event_per_token(
    triton_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    fields = {"text_input": PROMPT, "max_tokens": 10, "ignore_eos": True}
    tokens = expected_tokens(llama, codec, fields)
    events = sse_events(triton_server, {**fields, "stream": True})
    assert [e.get("error") for e in events] == [None] * len(events)
    assert len(events) == len(tokens) == 10
    deltas = [e["text_output"] for e in events]
    assert "".join(deltas) == codec.decode(tokens)
    # Each event carries exactly the text its token adds.
    assert deltas == expected_stream(codec, tokens)


@pytest.mark.integration
def test_non_streaming_includes_or_excludes_the_prompt(
    triton_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    fields = {"text_input": PROMPT, "max_tokens": 5}
    completion = codec.decode(expected_tokens(llama, codec, fields))
    assert generate_once(triton_server, fields)["text_output"] == PROMPT + completion
    assert (
        generate_once(triton_server, {**fields, "exclude_input_in_output": True})["text_output"] == completion
    )


@pytest.mark.integration
def test_stop_words_end_generation_on_the_server(
    triton_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    free = expected_tokens(llama, codec, {"text_input": PROMPT, "max_tokens": 8})
    stop = codec.decode(free[2:3])
    events = sse_events(
        triton_server, {"text_input": PROMPT, "max_tokens": 8, "stream": True, "stop_words": [stop]}
    )
    assert len(events) <= 3 < len(free)


@pytest.mark.integration
def test_request_too_long_is_rejected_with_a_clear_error(
    triton_server: TritonProcess, llama: LlamaModel
) -> None:
    limit = llama.config.max_position_embeddings
    with pytest.raises(urllib.error.HTTPError) as caught:
        generate_once(triton_server, {"text_input": PROMPT, "max_tokens": limit})
    assert "exceeds the context window" in caught.value.read().decode()


@pytest.mark.integration
def test_grpc_streaming_with_tritonclient(
    triton_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    fields = {"text_input": "Why is the sky blue?", "max_tokens": 6, "ignore_eos": True}
    tokens = expected_tokens(llama, codec, fields)
    inputs = [
        grpcclient.InferInput("text_input", [1, 1], "BYTES"),
        grpcclient.InferInput("max_tokens", [1, 1], "INT32"),
        grpcclient.InferInput("stream", [1, 1], "BOOL"),
        grpcclient.InferInput("ignore_eos", [1, 1], "BOOL"),
    ]
    inputs[0].set_data_from_numpy(np.array([[fields["text_input"].encode()]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[6]], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([[True]]))
    inputs[3].set_data_from_numpy(np.array([[True]]))
    texts = [
        r.as_numpy("text_output").reshape(-1)[0].decode()
        for r in stream_grpc(triton_server, "ensemble", inputs)
    ]
    assert len(texts) == len(tokens)
    assert "".join(texts) == codec.decode(tokens)


def stream_grpc(server: TritonProcess, model: str, inputs: list) -> list:
    """Send one request on a gRPC stream; return its non-final results (errors fail the test)."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = []
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=REQUEST_TIMEOUT_S)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                # A final response may still carry outputs (a non-streaming request's only answer).
                if result.get_response().outputs:
                    results.append(result)
                return results
            results.append(result)
    finally:
        client.stop_stream()
        client.close()


def scrape(server: TritonProcess) -> dict[str, float]:
    """Metric samples keyed by their full `name{labels}` text."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"
    }


def gauge(samples: dict[str, float], family: str, label: str, kind: str) -> float:
    return next(v for k, v in samples.items() if k.startswith(family + "{") and f'{label}="{kind}"' in k)


@pytest.mark.integration
def test_concurrent_requests_all_complete_and_gauges_track_them(
    triton_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    prompts = ["Tell me a story about a robot", "How do you bake bread?", "Hello world!"]
    payloads = [{"text_input": p, "max_tokens": 300, "ignore_eos": True} for p in prompts]
    results: dict[int, str] = {}

    def run(index: int) -> None:
        results[index] = "".join(
            e["text_output"] for e in sse_events(triton_server, {**payloads[index], "stream": True})
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    peak_active = peak_used = 0.0
    while any(t.is_alive() for t in threads):
        samples = scrape(triton_server)
        peak_active = max(peak_active, gauge(samples, "nv_trt_llm_request_metrics", "request_type", "active"))
        peak_used = max(
            peak_used, gauge(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "used")
        )
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S)
    assert [results[i] for i in range(len(payloads))] == [
        "".join(expected_stream(codec, expected_tokens(llama, codec, p))) for p in payloads
    ]
    assert results[0] == codec.decode(expected_tokens(llama, codec, payloads[0]))
    assert peak_active >= 2  # requests overlapped instead of running one after another
    assert peak_used >= 2


@pytest.mark.integration
def test_metrics_show_request_success_and_trt_llm_gauges(triton_server: TritonProcess) -> None:
    """Exactly the gauges of tensorrtllm_backend v0.12.0 inflight_batcher_llm/src/custom_metrics_reporter/
    custom_metrics_reporter.cc that the stand-in models (request_type active|max|scheduled|context,
    kv_cache_block_type max|free|used|tokens_per): no `waiting` or `fraction`, which only v0.18.0 has."""
    sse_events(triton_server, {"text_input": PROMPT, "max_tokens": 3, "stream": True})
    # The python backend counts a decoupled request when execute() returns, which may come after
    # the short stream's last response.
    deadline = time.monotonic() + 5
    counted = 'nv_inference_request_success{model="ensemble",version="1"}'
    while (samples := scrape(triton_server))[counted] < 1:
        assert time.monotonic() < deadline, "the request was never counted"
        time.sleep(0.1)
    published = {
        (key.split("{")[0], label.split('"')[1])
        for key in samples
        if key.startswith("nv_trt_llm_")
        for label in key.split("{", 1)[1].rstrip("}").split(",")
        if label.startswith(("request_type=", "kv_cache_block_type="))
    }
    modelled = (REQUEST_METRICS, KV_CACHE_METRICS)
    expected = {(f.name, v) for f in TRTLLM_ENGINE_0_12.families if f.name in modelled for v in f.values}
    assert published == expected
    assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", "max") == DEFAULT_MAX_BATCH_SIZE
    # Nothing is in flight any more.
    assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", "active") == 0
    kv = {
        k: gauge(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", k)
        for k in ("used", "free", "max", "tokens_per")
    }
    assert kv["used"] + kv["free"] == kv["max"] > 0
    assert kv["tokens_per"] == 64


# --- the 4-model inflight-batcher layout (preprocessing -> tensorrt_llm -> postprocessing) -------
# The repository is exactly what steps.publish renders for backend cpu-python (tiny-local spec).

TINY_LOCAL = Path(__file__).resolve().parents[1] / "workflows" / "examples" / "tiny-local.yaml"


@pytest.fixture(scope="module")
def inflight_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    workdir = tmp_path_factory.mktemp("inflight")
    # tensorrt_llm gets what steps.build writes for cpu-python: a directory with a checkpoint pointer.
    (workdir / "engine").mkdir()
    (workdir / "engine" / CPU_POINTER).write_text(json.dumps({"checkpoint": str(tiny_model)}))
    repository = render_repository(
        load_spec(TINY_LOCAL), workdir / "engine", tiny_model, CPU_TEMPLATES, workdir / "repository"
    )
    server = start_triton(repository, workdir)
    yield server
    server.stop()


@pytest.mark.integration
def test_inflight_layout_streams_tokens_through_all_four_models(
    inflight_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    fields = {"text_input": PROMPT, "max_tokens": 7}
    tokens = expected_tokens(llama, codec, fields)
    events = sse_events(inflight_server, {**fields, "stream": True})
    # Upstream postprocessing decodes each streamed response on its own: one token per event.
    assert [e["text_output"] for e in events] == [codec.decode([t]) for t in tokens]
    assert generate_once(inflight_server, fields)["text_output"] == codec.decode(tokens)
    with_prompt = generate_once(inflight_server, {**fields, "exclude_input_in_output": False})
    assert with_prompt["text_output"] == PROMPT + codec.decode(tokens)


@pytest.mark.integration
def test_inflight_layout_honours_end_id_and_stop_words(
    inflight_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    free = expected_tokens(llama, codec, {"text_input": PROMPT, "max_tokens": 8})
    stopped = generate_once(
        inflight_server, {"text_input": PROMPT, "max_tokens": 8, "stop_words": [codec.decode(free[1:2])]}
    )
    assert stopped["text_output"] == codec.decode(free[:2])
    ended = generate_once(inflight_server, {"text_input": PROMPT, "max_tokens": 8, "end_id": free[0]})
    assert ended["text_output"] == codec.decode(
        expected_tokens(llama, codec, {"text_input": PROMPT, "max_tokens": 8, "end_id": free[0]})
    )
    samples = scrape(inflight_server)
    max_batch = load_spec(TINY_LOCAL).build.max_batch_size
    assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", "max") == max_batch
    assert any(
        'model="tensorrt_llm"' in key for key in samples if key.startswith("nv_trt_llm_request_metrics")
    )


@pytest.mark.integration
def test_tensorrt_llm_model_speaks_token_ids_over_grpc(
    inflight_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    prompt = codec.encode(PROMPT)
    tokens = list(generate(llama, prompt, GenerationParams(max_new_tokens=4, end_id=codec.eos_id)))
    inputs = [
        grpcclient.InferInput("input_ids", [1, len(prompt)], "INT32"),
        grpcclient.InferInput("input_lengths", [1, 1], "INT32"),
        grpcclient.InferInput("request_output_len", [1, 1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(np.array([prompt], dtype=np.int32))
    inputs[1].set_data_from_numpy(np.array([[len(prompt)]], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([[4]], dtype=np.int32))
    results = stream_grpc(inflight_server, "tensorrt_llm", inputs)
    assert len(results) == 1
    assert results[0].as_numpy("output_ids").tolist() == [[tokens]]  # exclude_input_in_output=true
    assert results[0].as_numpy("sequence_length").tolist() == [[len(tokens)]]


# --- the LLM-API model (trtllm-pytorch): tensorrtllm_backend v0.19.0 all_models/llmapi ----------
# The repository is what steps.publish renders for backend trtllm-pytorch, with the CPU stand-in's
# model.py as the template; it speaks v0.19.0's tensorrt_llm/1/model.py + helpers.py contract.


@pytest.fixture(scope="module")
def llmapi_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    from steps.publish import CPU_LLMAPI_TEMPLATES, publish
    from tests.test_publish import pytorch_spec

    workdir = tmp_path_factory.mktemp("llmapi")
    repository = str(workdir / "repository")
    published = publish(pytorch_spec(), tiny_model, tiny_model, repository, CPU_LLMAPI_TEMPLATES)
    server = start_triton(Path(published.repository), workdir)
    yield server
    server.stop()


def llmapi_post(server: TritonProcess, endpoint: str, payload: dict) -> list[dict]:
    """POST to the llmapi model's generate / generate_stream; every JSON answer (SSE events or one)."""
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{LLMAPI.model}/{endpoint}", data=json.dumps(payload).encode()
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        body = response.read().decode()
    if endpoint == "generate":
        return [json.loads(body)]
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def greedy(llama: LlamaModel, codec: TextCodec, prompt: str, max_tokens: int) -> list[int]:
    return list(generate(llama, codec.encode(prompt), GenerationParams(max_new_tokens=max_tokens,
                                                                       end_id=codec.eos_id)))  # fmt: skip


@pytest.mark.integration
def test_llmapi_stand_in_streams_the_whole_text_so_far_and_returns_the_prompt_by_default(
    llmapi_server: TritonProcess, llama: LlamaModel, codec: TextCodec
) -> None:
    """v0.19.0 model.py sends RequestOutput.outputs[0].text (cumulative, not text_diff) per step, the
    last one final; helpers.py defaults sampling_param_exclude_input_from_output to false."""
    tokens = greedy(llama, codec, PROMPT, 6)
    events = llmapi_post(llmapi_server, "generate_stream", LLMAPI.request(PROMPT, 6, stream=True))
    assert [e["text_output"] for e in events] == [codec.decode(tokens[: i + 1]) for i in range(len(tokens))]
    (whole,) = llmapi_post(llmapi_server, "generate", {"text_input": PROMPT, "sampling_param_max_tokens": 6,
                                                        "return_finish_reason": True})  # fmt: skip
    assert whole["text_output"] == codec.decode(codec.encode(PROMPT) + tokens)
    assert whole["finish_reason"] == ("length" if len(tokens) == 6 else "stop")
    (default,) = llmapi_post(llmapi_server, "generate", {"text_input": PROMPT})
    assert default["text_output"] == codec.decode(codec.encode(PROMPT) + greedy(llama, codec, PROMPT, 32))


@pytest.mark.integration
def test_llmapi_stand_in_refuses_the_ensemble_contract_and_batched_text(llmapi_server: TritonProcess) -> None:
    """No batch dimension (model.yaml triton_config.max_batch_size 0, config.pbtxt text_input dims
    [-1]: a batched [1, 1] prompt is refused); the ensemble's max_tokens is no input of this model."""

    def first_error(inputs: dict[str, tuple[np.ndarray, str]]) -> str:
        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(llmapi_server.grpc_url)
        tensors = []
        for name, (array, datatype) in inputs.items():
            tensors.append(grpcclient.InferInput(name, list(array.shape), datatype))
            tensors[-1].set_data_from_numpy(array)
        try:
            client.start_stream(callback=lambda result, error: responses.put(error))
            client.async_stream_infer(LLMAPI.model, tensors)
            return str(responses.get(timeout=REQUEST_TIMEOUT_S))
        finally:
            client.stop_stream()
            client.close()

    text = np.array([PROMPT.encode()], dtype=np.object_)
    assert "Expected [-1], got [1,1]" in first_error({"text_input": (text[None], "BYTES")})
    max_tokens = np.array([4], dtype=np.int32)
    assert "max_tokens" in first_error({"text_input": (text, "BYTES"), "max_tokens": (max_tokens, "INT32")})
    assert not [key for key in scrape(llmapi_server) if key.startswith("nv_trt_llm_")]  # model.py has none


@pytest.mark.integration
def test_pytorch_shaped_repository_end_to_end(
    llmapi_server: TritonProcess, llama: LlamaModel, codec: TextCodec, tiny_model: Path, tmp_path: Path
) -> None:
    """The published trtllm-pytorch repository, loaded by the real CPU tritonserver, streamed from by
    the load generator, the deploy smoke request and aiperf 0.13, each in the llmapi contract; the
    launcher's tp x pp check passes on it."""
    from steps.autoscale.loadgen import LoadPlan, prompt, run_load
    from steps.benchmark.sweep import run_sweep
    from steps.benchmark.tools import Target
    from steps.deploy import smoke_request
    from steps.launcher import checks
    from tests.test_publish import pytorch_spec
    from workflows.spec import LoadStage

    spec = pytorch_spec()
    assert checks.check_llmapi_options(llmapi_server.repository, spec.world_size) == []

    plan = LoadPlan((LoadStage(name="hold", concurrency=3, duration_s=4),), isl=12, osl=5, max_requests=9,
                    contract=LLMAPI)  # fmt: skip
    tokens = greedy(llama, codec, prompt(plan.isl), plan.osl)
    records = run_load(llmapi_server.http_url, plan).records
    done = [r for r in records if r.error is None]
    # One event per step; a sequence ended by the end id gets one more, final, event without a token.
    assert len(done) >= 3 and {r.tokens for r in done} == {len(tokens) + (len(tokens) < plan.osl)}
    assert smoke_request(llmapi_server.grpc_url, contract=LLMAPI) >= 1

    out = tmp_path / "bench"
    result = run_sweep(spec, Target(llmapi_server.http_url, llmapi_server.grpc_url, LLMAPI), tiny_model, out,
                       log=lambda _: None)  # fmt: skip
    assert result.failed == 0, [p["error"] for p in result.points]
    for meta in result.points:
        export = json.loads((out / meta["point"] / "profile_export_aiperf.json").read_text())
        assert export["request_count"]["avg"] == spec.benchmark.request_count
        # An honest limit, not a goal: aiperf counts the tokens of every streamed response, and the
        # llmapi model's responses each repeat the text so far, so its output length (and token
        # throughput) come out inflated on this backend (measured: 165 for osl 16).
        assert export["output_sequence_length"]["avg"] > 2 * meta["osl"]

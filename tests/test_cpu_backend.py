"""The CPU backend: numpy Llama decoding, and the real tritonserver serving it as `ensemble`."""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from steps.cpu_backend.llama import GenerationParams, LlamaModel, generate
from steps.cpu_backend.textgen import IncrementalDecoder, TextCodec, parse_text_request
from steps.tritonenv import STUB_PATH_VAR, find_tritonserver, stub_environment, tritonserver_args
from tests.support.triton import TritonProcess

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


def test_load_names_a_missing_tensor(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(tiny_model / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        LlamaModel.load(tmp_path)


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
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
        texts = []
        while True:
            result, error = responses.get(timeout=REQUEST_TIMEOUT_S)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            texts.append(result.as_numpy("text_output").reshape(-1)[0].decode())
    finally:
        client.stop_stream()
        client.close()
    assert len(texts) == len(tokens)
    assert "".join(texts) == codec.decode(tokens)


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
    sse_events(triton_server, {"text_input": PROMPT, "max_tokens": 3, "stream": True})
    samples = scrape(triton_server)
    assert samples['nv_inference_request_success{model="ensemble",version="1"}'] >= 1
    for kind in ("waiting", "active", "scheduled", "context", "max"):
        assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", kind) >= 0
    assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", "max") == 8
    assert (
        gauge(samples, "nv_trt_llm_request_metrics", "request_type", "active") == 0
    )  # nothing in flight now
    kv = {
        k: gauge(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", k)
        for k in ("fraction", "used", "free", "max", "tokens_per")
    }
    assert kv["used"] + kv["free"] == kv["max"] > 0
    assert kv["tokens_per"] == 64 and kv["fraction"] == kv["used"] / kv["max"]

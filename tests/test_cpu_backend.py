"""The CPU backend: numpy Llama decoding, and the real tritonserver serving it as `ensemble`."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from safetensors.numpy import load_file, save_file

from steps.build import CPU_POINTER
from steps.cpu_backend.inflight import decode_tokens_batch, word_list_tensor, word_lists_from_tensor
from steps.cpu_backend.llama import GenerationParams, LlamaModel, generate
from steps.cpu_backend.repository import MODELS_DIR
from steps.cpu_backend.textgen import IncrementalDecoder, TextCodec, parse_text_request
from steps.tritonenv import STUB_PATH_VAR, find_tritonserver, stub_environment, tritonserver_args
from tests.support.triton import TritonProcess, start_triton

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


# --- the 4-model inflight-batcher layout (preprocessing -> tensorrt_llm -> postprocessing) -------
# steps.publish.render_repository (teammate B) is not in the tree yet, so this test writes minimal
# configs with the upstream tensorrtllm_backend v0.12.0 names itself.

PRE_INPUTS = [
    ("QUERY", "STRING", [1]),
    ("REQUEST_OUTPUT_LEN", "INT32", [1]),
    ("BAD_WORDS_DICT", "STRING", [-1], True),
    ("STOP_WORDS_DICT", "STRING", [-1], True),
    ("END_ID", "INT32", [1], True),
    ("PAD_ID", "INT32", [1], True),
]
PRE_OUTPUTS = [
    ("INPUT_ID", "INT32", [-1]),
    ("REQUEST_INPUT_LEN", "INT32", [1]),
    ("BAD_WORDS_IDS", "INT32", [2, -1]),
    ("STOP_WORDS_IDS", "INT32", [2, -1]),
    ("REQUEST_OUTPUT_LEN", "INT32", [-1]),
    ("OUT_END_ID", "INT32", [1]),
    ("OUT_PAD_ID", "INT32", [1]),
]
LLM_INPUTS = [
    ("input_ids", "INT32", [-1]),
    ("input_lengths", "INT32", [1], False, True),
    ("request_output_len", "INT32", [1], False, True),
    ("end_id", "INT32", [1], True, True),
    ("pad_id", "INT32", [1], True, True),
    ("stop_words_list", "INT32", [2, -1], True),
    ("bad_words_list", "INT32", [2, -1], True),
    ("streaming", "BOOL", [1], True, True),
]
LLM_OUTPUTS = [("output_ids", "INT32", [-1, -1]), ("sequence_length", "INT32", [-1])]
POST_INPUTS = [("TOKENS_BATCH", "INT32", [-1, -1]), ("SEQUENCE_LENGTH", "INT32", [-1])]
POST_OUTPUTS = [("OUTPUT", "STRING", [-1])]
ENS_INPUTS = [
    ("text_input", "STRING", [1]),
    ("max_tokens", "INT32", [1]),
    ("bad_words", "STRING", [-1], True),
    ("stop_words", "STRING", [-1], True),
    ("end_id", "INT32", [1], True),
    ("pad_id", "INT32", [1], True),
    ("stream", "BOOL", [1], True),
]
ENS_OUTPUTS = [("text_output", "STRING", [-1])]
STEPS = {
    "preprocessing": (
        {
            "QUERY": "text_input",
            "REQUEST_OUTPUT_LEN": "max_tokens",
            "BAD_WORDS_DICT": "bad_words",
            "STOP_WORDS_DICT": "stop_words",
            "END_ID": "end_id",
            "PAD_ID": "pad_id",
        },
        {
            "INPUT_ID": "_INPUT_ID",
            "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
            "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
            "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
            "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
            "OUT_END_ID": "_PREPROCESSOR_END_ID",
            "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
        },
    ),
    "tensorrt_llm": (
        {
            "input_ids": "_INPUT_ID",
            "input_lengths": "_REQUEST_INPUT_LEN",
            "request_output_len": "_REQUEST_OUTPUT_LEN",
            "end_id": "_PREPROCESSOR_END_ID",
            "pad_id": "_PREPROCESSOR_PAD_ID",
            "streaming": "stream",
            "stop_words_list": "_STOP_WORDS_IDS",
            "bad_words_list": "_BAD_WORDS_IDS",
        },
        {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"},
    ),
    "postprocessing": (
        {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
        {"OUTPUT": "text_output"},
    ),
}


def pbtxt_tensors(kind: str, specs: list) -> str:
    entries = []
    for name, dtype, dims, *flags in specs:
        optional, scalar = [*flags, False, False][:2]
        entries.append(
            f'{{ name: "{name}" data_type: TYPE_{dtype} dims: {dims}'
            + (" optional: true" if optional else "")
            + (" reshape: { shape: [ ] }" if scalar else "")
            + " }"
        )
    return f"{kind} [ {', '.join(entries)} ]\n"


def python_model_config(
    name: str, inputs: list, outputs: list, params: dict[str, str], decoupled=False
) -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
        + ("model_transaction_policy { decoupled: true }\ndynamic_batching { }\n" if decoupled else "")
        + pbtxt_tensors("input", inputs)
        + pbtxt_tensors("output", outputs)
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
        )
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def ensemble_config() -> str:
    steps = []
    for model, (inputs, outputs) in STEPS.items():
        maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
        maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
        steps.append(f'{{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}')
    return (
        'name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        + pbtxt_tensors("input", ENS_INPUTS)
        + pbtxt_tensors("output", ENS_OUTPUTS)
        + f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


def write_inflight_repository(repository: Path, model_dir: Path, engine_dir: Path) -> None:
    """ensemble + preprocessing + tensorrt_llm + postprocessing with steps/cpu_backend/models/*/1/model.py."""
    configs = {
        "preprocessing": python_model_config(
            "preprocessing", PRE_INPUTS, PRE_OUTPUTS, {"tokenizer_dir": model_dir}
        ),
        "tensorrt_llm": python_model_config(
            "tensorrt_llm",
            LLM_INPUTS,
            LLM_OUTPUTS,
            {"gpt_model_path": engine_dir, "exclude_input_in_output": "true"},
            decoupled=True,
        ),
        "postprocessing": python_model_config(
            "postprocessing", POST_INPUTS, POST_OUTPUTS, {"tokenizer_dir": model_dir}
        ),
        "ensemble": ensemble_config(),
    }
    for name, config in configs.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(config)
        if name != "ensemble":
            shutil.copyfile(MODELS_DIR / name / "1" / "model.py", repository / name / "1" / "model.py")


@pytest.fixture(scope="module")
def inflight_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    workdir = tmp_path_factory.mktemp("inflight")
    # tensorrt_llm gets what steps.build writes for cpu-python: a directory with a checkpoint pointer.
    (workdir / "engine").mkdir()
    (workdir / "engine" / CPU_POINTER).write_text(json.dumps({"checkpoint": str(tiny_model)}))
    write_inflight_repository(workdir / "repository", tiny_model, workdir / "engine")
    server = start_triton(workdir / "repository", workdir)
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
    assert gauge(samples, "nv_trt_llm_request_metrics", "request_type", "max") == 8
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

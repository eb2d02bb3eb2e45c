"""Shared machinery of the CPU backend's decoupled Triton python models (imported only inside the stub).

A request runs on its own thread; at most `max_active` sequences decode at once (the rest wait for
a slot), which is how an in-flight batcher looks from the outside. The TRT-LLM backend's custom
gauges of the version stood in for are published from the same counters, so dashboards and
autoscaling rules see real values.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import triton_python_backend_utils as pb_utils

from steps.cpu_backend.llama import GenerationParams, LlamaModel, check_fits, checkpoint_dir, generate
from steps.cpu_backend.textgen import SchedulerStats
from workflows.backend_metrics import CPU_PYTHON, KV_CACHE_METRICS, REQUEST_METRICS, Contract

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def model_parameters(args: dict) -> dict[str, str]:
    """The `parameters { key: ... value { string_value: ... } }` of the model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def max_batch_size(args: dict) -> int:
    return int(json.loads(args["model_config"]).get("max_batch_size", 0))


def resolve_dir(args: dict, value: str, parameter: str) -> Path:
    """A directory parameter: absolute, or relative to this model's directory in the repository."""
    if not value or value.startswith("${"):
        raise ValueError(f"config parameter {parameter} is not set (got {value!r}); give a directory path")
    path = Path(value)
    path = path if path.is_absolute() else Path(args["model_repository"]) / path
    if not path.is_dir():
        raise ValueError(f"config parameter {parameter}={value} is not a directory")
    return path


def engine_dir(args: dict, params: dict[str, str]) -> Path:
    """The HF checkpoint to run: parameter `engine_dir` or upstream's `gpt_model_path`.

    The directory may be the checkpoint itself or steps.build's cpu-python output (a pointer file).
    """
    key = "engine_dir" if params.get("engine_dir") else "gpt_model_path"
    return checkpoint_dir(resolve_dir(args, params.get(key, ""), key))


def request_inputs(request, names: Iterable[str]) -> dict:
    """The named input tensors present in a request, as numpy arrays."""
    found = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


def output_names(args: dict) -> set[str]:
    """Outputs declared in config.pbtxt: a model returns only those (configs may list a subset)."""
    return {output["name"] for output in json.loads(args["model_config"]).get("output", [])}


def tensors_response(values: dict, declared: set[str]) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in values.items() if name in declared]
    )


def send_error(sender, message: str) -> None:
    """Finish a decoupled request with an error the client sees."""
    sender.send(
        pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)), flags=FINAL
    )


def run_in_thread(work: Callable[[], None], sender) -> None:
    """Serve one request on a daemon thread; any exception becomes the request's error response."""

    def guarded() -> None:
        try:
            work()
        except Exception as exc:
            pb_utils.Logger.log_error(f"request failed: {exc!r}")
            send_error(sender, str(exc))

    threading.Thread(target=guarded, daemon=True).start()


class TrtLlmGauges:
    """The nv_trt_llm_* gauge families of the version the CPU backend stands in for, and nothing else.

    Families, labels and HELP texts come from workflows/backend_metrics.py (the cpu-python row, read
    from tensorrtllm_backend's custom metrics reporter at the pinned tag).
    """

    def __init__(
        self, stats: SchedulerStats, model_name: str, version: str, standing_in: Contract = CPU_PYTHON
    ):
        readers = {REQUEST_METRICS: stats.request_values, KV_CACHE_METRICS: stats.kv_cache_values}
        labels = {"model": model_name, "version": version}
        self._groups = []
        for family in standing_in.families:
            read = readers[family.name]
            missing = set(family.values) - set(read())
            if missing:
                raise ValueError(f"the CPU backend cannot compute {family.name} {sorted(missing)}")
            # Triton drops a family whose Python object is garbage collected: keep the references.
            triton_family = pb_utils.MetricFamily(
                name=family.name, description=family.description, kind=pb_utils.MetricFamily.GAUGE
            )
            gauges = {v: triton_family.Metric(labels={**labels, family.label: v}) for v in family.values}
            self._groups.append((triton_family, read, gauges))
        self._lock = threading.Lock()
        self.publish()

    def publish(self) -> None:
        with self._lock:
            for _, read, gauges in self._groups:
                values = read()
                for value, gauge in gauges.items():
                    gauge.set(values[value])


class ConcurrentGenerator:
    """Runs greedy decoding for many requests at once, at most `max_active` sequences in flight."""

    def __init__(
        self,
        model: LlamaModel,
        max_active: int,
        model_name: str,
        version: str,
        standing_in: Contract = CPU_PYTHON,
    ):
        self.model = model
        self.stats = SchedulerStats(max_active, model.config.max_position_embeddings)
        self.gauges = TrtLlmGauges(self.stats, model_name, version, standing_in)
        self._slots = threading.BoundedSemaphore(max_active)
        self._ids = itertools.count()

    def tokens(self, prompt_ids: list[int], params: GenerationParams, sender=None) -> Iterator[int]:
        """Yield new tokens; waits for a free slot first; stops early if the client cancelled."""
        check_fits(self.model, len(prompt_ids), params.max_new_tokens)
        request_id = next(self._ids)
        with self._slots:  # waiting for a slot shows in no gauge, as in the executor's queue
            self.stats.context(+1)
            self.stats.set_length(request_id, len(prompt_ids))
            self.gauges.publish()
            in_context = True
            try:
                for count, token in enumerate(generate(self.model, prompt_ids, params), start=1):
                    if in_context:
                        in_context = False
                        self.stats.context(-1)
                    self.stats.set_length(request_id, len(prompt_ids) + count)
                    self.gauges.publish()
                    yield token
                    if sender is not None and sender.is_cancelled():
                        return
            finally:
                if in_context:  # finished (EOS, error, cancel) before its first token
                    self.stats.context(-1)
                self.stats.set_length(request_id, None)
                self.gauges.publish()


class DecoupledGenerationModel:
    """Base of the generating models: request parsing on Triton's thread, generation on a thread each.

    Subclasses call `load_generator` in initialize() and implement `parse` and `serve`.
    """

    generator: ConcurrentGenerator

    def load_generator(self, args: dict, checkpoint: Path) -> LlamaModel:
        """Check the model is decoupled, load the checkpoint, and size the generator by max_batch_size."""
        if not pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"])):
            raise ValueError(
                f"model {args['model_name']} must be decoupled: "
                "add model_transaction_policy { decoupled: true } to its config.pbtxt"
            )
        model = LlamaModel.load(checkpoint)
        self.generator = ConcurrentGenerator(
            model,
            max_active=max(1, max_batch_size(args)),
            model_name=args["model_name"],
            version=args["model_version"],
        )
        return model

    def parse(self, request):
        """The request's inputs, validated (raise to reject it with the exception's message)."""
        raise NotImplementedError

    def serve(self, parsed, sender) -> None:
        """Generate and send every response of one request, the last one flagged FINAL."""
        raise NotImplementedError

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = self.parse(request)
            except Exception as exc:
                send_error(sender, f"invalid request: {exc}")
                continue
            run_in_thread(lambda parsed=parsed, sender=sender: self.serve(parsed, sender), sender)
        return None

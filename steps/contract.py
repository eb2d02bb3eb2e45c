"""The serving contract every client of a megapod deployment speaks.

Triton serves the TensorRT-LLM inflight-batcher `ensemble` (text_input / max_tokens / stream in,
text_output out, one response per token when streaming). Benchmarks, the load generator, the
deploy smoke request and the local CPU backend all address it by this name.
"""

SERVED_MODEL = "ensemble"

"""Real-server fixtures shared by every part's tests (tiny model, tritonserver)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from steps.cpu_backend.repository import write_ensemble_single
from steps.tinymodel import make_tiny_llama
from tests.support.triton import TritonProcess, start_triton


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny HF-format Llama (config.json, model.safetensors, tokenizer files)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)


@pytest.fixture(scope="session")
def triton_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[TritonProcess]:
    """A real tritonserver on 127.0.0.1 serving the CPU `ensemble` (decoupled, streaming) on tiny_model."""
    workdir = tmp_path_factory.mktemp("triton")
    repository = workdir / "repository"
    write_ensemble_single(repository, tiny_model)
    server = start_triton(repository, workdir)
    yield server
    crashed = server.process.poll() is not None
    server.stop()
    if crashed or request.session.testsfailed:
        print(f"\n--- tritonserver log ({server.log_path}) ---\n{server.log_tail()}")

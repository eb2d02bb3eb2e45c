"""Which Triton image carries which TensorRT-LLM release, and which releases each backend can use.

One table, from Triton's release compatibility matrix (triton-inference-server/server
docs/introduction/compatibility.md, "Container Name: trtllm-python-py3"): Triton release ->
(TensorRT-LLM version, the base image's python3). Everything else is derived from it: the serving
image's base for a TensorRT-LLM version, the launcher's python, and what `megapod validate`
refuses. Pure data and functions (no spec import): workflows/spec.py validates with it.
"""

from __future__ import annotations

import re

NGC_TRITON = "nvcr.io/nvidia/tritonserver"
TRTLLM_IMAGE_SUFFIX = "trtllm-python-py3"

# Triton release -> (TensorRT-LLM version, python3 of the base image). Rows with a non-release
# TensorRT-LLM build (25.02: 0.17.0.post1, 25.11: 1.0.3.2510) are left out.
TRITON_TRTLLM: dict[str, tuple[str, str]] = {
    "24.05": ("0.9.0", "3.10"),
    "24.06": ("0.10.0", "3.10"),
    "24.07": ("0.11.0", "3.10"),
    "24.08": ("0.12.0", "3.10"),
    "24.09": ("0.13.0", "3.10"),
    "24.10": ("0.14.0", "3.10"),
    "24.11": ("0.15.0", "3.10"),
    "24.12": ("0.16.0", "3.12"),
    "25.01": ("0.17.0", "3.12"),
    "25.03": ("0.18.0", "3.12"),
    "25.04": ("0.18.2", "3.12"),
    "25.05": ("0.19.0", "3.12"),
    "25.06": ("0.20.0", "3.12"),
    "25.07": ("0.20.0", "3.12"),
    "25.08": ("0.21.0", "3.12"),
    "25.09": ("1.0.0", "3.12"),
    "25.10": ("1.0.0", "3.12"),
    "25.12": ("1.1.0", "3.12"),
    "26.01": ("1.1.0", "3.12"),
    "26.02": ("1.1.0", "3.12"),
    "26.03": ("1.2.0", "3.12"),
    "26.04": ("1.2.1", "3.12"),
    "26.05": ("1.2.1", "3.12"),
    "26.06": ("1.2.1", "3.12"),
    "26.07": ("1.2.1", "3.12"),
}

# The release each backend targets when the spec names none: the reference's 24.08 stack for
# engines; for the PyTorch flow the release whose llmapi model steps.publish writes the config of.
DEFAULT_TRTLLM = {"trtllm-engine": "0.12.0", "trtllm-pytorch": "0.19.0"}
# The Triton llmapi model (all_models/llmapi/tensorrt_llm) first ships in tensorrtllm_backend
# v0.19.0; earlier tags have only the engine models.
PYTORCH_MIN_TRTLLM = "0.19.0"
# steps.publish writes the llmapi model's config.pbtxt with the tensors of tensorrtllm_backend
# v0.19.0; later releases change them (sampling_param_beam_width became sampling_param_best_of,
# new inputs and outputs), so a repository for them would not load: only this release is served.
PYTORCH_LLMAPI_TRTLLM = "0.19.0"
# From v0.20.0 the Triton model templates live in TensorRT-LLM (triton_backend/all_models);
# tensorrtllm_backend v0.20.0+ keeps only a submodule pointer to it.
TEMPLATES_MOVED_TRTLLM = "0.20.0"
# megapod's launcher needs python >= 3.11 (StrEnum); older bases get python3.11 from apt.
LAUNCHER_MIN_PYTHON = "3.11"
IMAGE_RELEASE = re.compile(r"(?:^|[-_])(?P<release>\d{2}\.\d{2})(?=$|[-_])")


def version_key(version: str) -> tuple[int, ...]:
    """A version as comparable integers: '0.19.0' -> (0, 19, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def trtllm_versions() -> list[str]:
    """Every TensorRT-LLM version some Triton image carries, oldest first."""
    return sorted({version for version, _ in TRITON_TRTLLM.values()}, key=version_key)


def triton_release(trtllm_version: str) -> str:
    """The newest Triton release carrying this TensorRT-LLM version (KeyError if none does)."""
    releases = [r for r, (version, _) in TRITON_TRTLLM.items() if version == trtllm_version]
    if not releases:
        raise KeyError(trtllm_version)
    return max(releases, key=version_key)


def serving_base(trtllm_version: str) -> str:
    """The NGC Triton image the serving image is built on for this TensorRT-LLM version."""
    return f"{NGC_TRITON}:{triton_release(trtllm_version)}-{TRTLLM_IMAGE_SUFFIX}"


def launcher_python(trtllm_version: str) -> str:
    """The python the serving image's launcher venv uses: the base's, if new enough."""
    base = TRITON_TRTLLM[triton_release(trtllm_version)][1]
    return base if version_key(base) >= version_key(LAUNCHER_MIN_PYTHON) else LAUNCHER_MIN_PYTHON


def templates_source(trtllm_version: str) -> tuple[str, str]:
    """(GitHub repository, directory in its tagged archive) holding the Triton model templates."""
    if version_key(trtllm_version) >= version_key(TEMPLATES_MOVED_TRTLLM):
        return "NVIDIA/TensorRT-LLM", "triton_backend/all_models"
    return "triton-inference-server/tensorrtllm_backend", "all_models"


def image_release(image: str) -> str | None:
    """The Triton release an image's tag names (`...:24.08-trtllm-python-py3`, `...:0.1.0-25.10`)."""
    name = image.split("@")[0]
    _, _, tag = name.rpartition(":")
    if "/" in tag or not tag:
        return None
    match = IMAGE_RELEASE.search(tag)
    return match["release"] if match and match["release"] in TRITON_TRTLLM else None


def check_release(backend: str, trtllm_version: str | None, image: str) -> None:
    """Refuse a backend / TensorRT-LLM version / serving image that cannot work (ValueError)."""
    if backend not in DEFAULT_TRTLLM:
        if trtllm_version is not None:
            raise ValueError(f"serving.trtllm_version: backend {backend} runs no TensorRT-LLM; remove it")
        return
    version = trtllm_version or DEFAULT_TRTLLM[backend]
    known = trtllm_versions()
    if version not in known:
        raise ValueError(
            f"serving.trtllm_version: {version} is carried by no Triton trtllm-python-py3 image; "
            f"use one of {', '.join(known)}"
        )
    if backend == "trtllm-pytorch" and version_key(version) < version_key(PYTORCH_MIN_TRTLLM):
        raise ValueError(
            f"serving.trtllm_version: {version} has no Triton llmapi model for backend trtllm-pytorch; "
            f"use {PYTORCH_MIN_TRTLLM} (Triton {triton_release(PYTORCH_MIN_TRTLLM)}) or later"
        )
    if backend == "trtllm-pytorch" and version != PYTORCH_LLMAPI_TRTLLM:
        raise ValueError(
            f"serving.trtllm_version: {version}: megapod publishes the llmapi model of TensorRT-LLM "
            f"{PYTORCH_LLMAPI_TRTLLM} (its tensors change in later releases); use {PYTORCH_LLMAPI_TRTLLM} "
            f"(Triton {triton_release(PYTORCH_LLMAPI_TRTLLM)})"
        )
    release = image_release(image)
    if release and TRITON_TRTLLM[release][0] != version:
        carried = TRITON_TRTLLM[release][0]
        usable = backend != "trtllm-pytorch" or version_key(carried) >= version_key(PYTORCH_MIN_TRTLLM)
        raise ValueError(
            f"serving.image {image} is built on Triton {release} (TensorRT-LLM {carried}) but the spec "
            f"targets TensorRT-LLM {version} (Triton {triton_release(version)}): "
            + (f"set serving.trtllm_version: {carried}, or " if usable else "")
            + "rebuild the image (megapod images SPEC)"
        )

"""Which image each stage runs in, and the `docker build` commands that make those images for a spec.

The build stage runs TensorRT-LLM's converters and trtllm-build, which only the serving image
(images/triton-trtllm) carries; every other stage needs the pipeline tools (images/pipeline).
Both images are built for the spec's TensorRT-LLM release (workflows/releases.py): the serving
image on the Triton base carrying it, the pipeline image with that release's Triton model
templates. `megapod images SPEC` prints the commands.
"""

from __future__ import annotations

from workflows.argo import common as c
from workflows.releases import launcher_python, serving_base, templates_source
from workflows.spec import Spec

SERVING_DOCKERFILE = "images/triton-trtllm/Dockerfile"
PIPELINE_DOCKERFILE = "images/pipeline/Dockerfile"
# Stages whose tools ship in the serving image; the others run in the pipeline image.
SERVING_IMAGE_STAGES = frozenset({c.BUILD})


def stage_image(spec: Spec, stage: str) -> str:
    """The image the stage's container runs."""
    return spec.serving.image if stage in SERVING_IMAGE_STAGES else spec.images.pipeline


def serving_build_args(spec: Spec) -> dict[str, str]:
    """--build-arg values of images/triton-trtllm/Dockerfile for the spec's backend and release."""
    version = _version(spec)
    return {
        "BASE_IMAGE": serving_base(version),
        "TRTLLM_VERSION": version,
        "BACKEND": str(spec.backend),
        "PYTHON_VERSION": launcher_python(version),
    }


def pipeline_build_args(spec: Spec) -> dict[str, str]:
    """--build-arg values of images/pipeline/Dockerfile: where that release's Triton models come from."""
    version = _version(spec)
    repository, directory = templates_source(version)
    return {
        "TRTLLM_VERSION": version,
        "BACKEND": str(spec.backend),
        "TRITON_MODELS_REPO": repository,
        "TRITON_MODELS_DIR": directory,
    }


def docker_build_commands(spec: Spec) -> list[str]:
    """The two `docker build` commands (run from the repository root), tagged as the spec names them."""
    return [
        _command(SERVING_DOCKERFILE, serving_build_args(spec), spec.serving.image),
        _command(PIPELINE_DOCKERFILE, pipeline_build_args(spec), spec.images.pipeline),
    ]


def _version(spec: Spec) -> str:
    if spec.trtllm_version is None:
        raise ValueError(f"backend {spec.backend} runs no TensorRT-LLM: it builds no images")
    return spec.trtllm_version


def _command(dockerfile: str, build_args: dict[str, str], image: str) -> str:
    args = " ".join(f"--build-arg {key}={value}" for key, value in build_args.items())
    # A digest reference names a pushed image; tag the build with its repository instead.
    return f"docker build -f {dockerfile} {args} -t {image.split('@')[0]} ."

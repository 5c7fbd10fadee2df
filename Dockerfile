# The pipeline's image: the project and its dependencies in a virtual environment (/opt/msa), run as a non-root
# user. Work pools run flows in it: Docker pools, Kubernetes pools (deploy/pools/), and `docker run` of `msa`.
#
#   make image                                    CPU torch on python:<your Python>-slim-bookworm, from the wheelhouse
#   make image TORCH_INDEX=https://download.pytorch.org/whl/cu126 TAG=gpu
#                                                 CUDA torch: its wheels carry the CUDA libraries, the host's
#                                                 NVIDIA container toolkit brings the driver
#
# It needs BuildKit: Docker 23 or newer with the buildx plugin, or Debian's docker.io 20.10, which has it built in.
# Nothing secret and no wheel goes into a layer: the wheelhouse (`make wheelhouse`: `pip wheel` on the host, with
# the host's indexes and certificates) comes in through a bind mount of the build context's build/wheels, and extra
# CA certificates (a TLS-intercepting proxy) through the build secret `ca`. With PIP_NO_INDEX=1 (what `make image`
# passes) pip reaches no index at all.

# A slim Python image for CPU; an NVIDIA CUDA runtime image (which has no Python: it comes from the base's own
# packages below) where the CUDA libraries must come from the base.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS system
# What a flow run needs besides Python packages: Python 3 with venv, git for Prefect's git_clone pull step, and CA
# certificates. Installed from the base's packages only when the base lacks them.
RUN set -eu; missing=""; \
    command -v python3 >/dev/null && python3 -c "import ensurepip, venv" 2>/dev/null \
        || missing="$missing python3 python3-venv"; \
    command -v git >/dev/null || missing="$missing git"; \
    [ -e /etc/ssl/certs/ca-certificates.crt ] || missing="$missing ca-certificates"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi

FROM system AS build
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=""
ARG EXTRAS=gpu
# pip's settings, as build arguments so that they stay in this stage: the wheelhouse first, and with PIP_NO_INDEX=1
# (what `make image` passes) no index at all.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS=/wheels
ARG PIP_NO_CACHE_DIR=1
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_ROOT_USER_ACTION=ignore
# The dependencies, in a layer that a change of code keeps: torch first, from TORCH_INDEX when given (a CUDA build),
# so that no requirement pulls another build; then pyproject.toml's requirements at constraints.txt's versions. The
# wheelhouse must come from the base's Python, to the patch release: requirements' markers
# (python_full_version < "3.11.3") are resolved for the Python that made it.
COPY pyproject.toml constraints.txt /src/
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    --mount=type=secret,id=ca \
    set -eu; \
    want="$(cat /wheels/python-version 2>/dev/null || true)"; \
    have="$(python3 -c 'import platform; print(platform.python_version())')"; \
    if [ -n "$want" ] && [ "$want" != "$have" ]; then \
        echo "the wheelhouse was resolved for Python $want and the base has Python $have: pick a base with $want"; \
        exit 1; \
    fi; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/msa; \
    /opt/msa/bin/pip install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple} "$TORCH"; \
    /opt/msa/bin/python -c 'import sys, tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print(*p["dependencies"], *(r for e in filter(None, sys.argv[1].split(",")) for r in p["optional-dependencies"][e]), \
sep="\n")' "$EXTRAS" > /tmp/requirements.txt; \
    /opt/msa/bin/pip install --quiet -c /src/constraints.txt -r /tmp/requirements.txt
# The project itself (its wheel is built with setuptools from the wheelhouse), then pip's check that every
# requirement is met.
COPY README.md /src/
COPY components /src/components
COPY flows /src/flows
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/msa/bin/pip install --quiet --no-deps /src; \
    /opt/msa/bin/pip check
# librosa compiles its numba kernels on first use into a cache beside its code, which the runtime user cannot
# write: compile them here, once (as `make install` does).
RUN /opt/msa/bin/python -c "import numpy; from components.core.config import AudioClipParams; \
from components.data.media import audio_features; audio_features(numpy.zeros(16000, numpy.float32), AudioClipParams())"

FROM system
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="msa-pipeline" \
      org.opencontainers.image.description="MLOps pipeline for multimodal sentiment analysis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN useradd --create-home --uid 10001 --user-group msa
COPY --from=build /opt/msa /opt/msa
USER 10001:10001
WORKDIR /home/msa
ENV PATH=/opt/msa/bin:$PATH \
    PYTHONUNBUFFERED=1
CMD ["msa", "--help"]

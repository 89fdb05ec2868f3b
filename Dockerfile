# syntax=docker/dockerfile:1.7
# bilingual-refseg: the one image every pipeline step (and the multi-node training job) runs in.
#
#   docker build -t ghcr.io/bilingual-refseg/refseg:0.1.0 .
#
# Stage "build" compiles what has no binary wheel (pydensecrf2, jieba) and turns the project and
# every dependency into wheels. Stage "runtime" installs only those wheels: no compiler, no
# package index, no secrets. torch/torchvision are PyPI's default Linux wheels, which pull the CUDA
# runtime libraries (nvidia-* wheels); the GPU node brings only the driver.
# Versions below must match pyproject.toml (tests/test_infra.py checks it).

ARG PYTHON_IMAGE_TAG=3.11-slim-bookworm

# ------------------------------------------------------------------------------------------------
FROM python:${PYTHON_IMAGE_TAG} AS build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# gcc/g++ and make for pydensecrf2 (Cython + C++); the Python headers come with the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY components ./components
COPY pipelines ./pipelines
COPY configs ./configs

# One wheel per distribution (the project's own included) in /wheels; torch pinned explicitly so a
# resolver change can never swap the CUDA build for another one.
RUN pip wheel --wheel-dir /wheels \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ./ \
    && for w in bilingual_refseg-*.whl pydensecrf2-*.whl kfp-*.whl "torch-${TORCH_VERSION}-"*.whl; do \
           compgen -G "/wheels/${w}" > /dev/null || { echo "no wheel ${w} in /wheels" >&2; exit 1; }; \
       done

# ------------------------------------------------------------------------------------------------
FROM python:${PYTHON_IMAGE_TAG} AS runtime

ARG REFSEG_VERSION=0.1.0
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# (Not "UID": bash keeps its own read-only UID variable.)
ARG APP_UID=10001

LABEL org.opencontainers.image.title="bilingual-refseg" \
      org.opencontainers.image.description="Chinese/English referring image segmentation: pipeline steps, training, serving" \
      org.opencontainers.image.version="${REFSEG_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/refseg \
    MPLCONFIGDIR=/tmp/matplotlib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A fixed, high, numeric UID/GID so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid "${APP_UID}" refseg \
    && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --home-dir /home/refseg --create-home \
       --shell /usr/sbin/nologin refseg

# Wheels only (--no-index): the build stage's /wheels is bind-mounted, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels \
        "bilingual-refseg==${REFSEG_VERSION}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip check \
    && python -c "import torch, torchvision, kfp, mlflow, pydensecrf.densecrf; print(torch.__version__, torchvision.__version__, kfp.__version__, mlflow.__version__)"

WORKDIR /home/refseg
USER ${APP_UID}:${APP_UID}

# The CLI answers without importing torch/mlflow (lazy imports): a cheap liveness signal.
HEALTHCHECK --interval=60s --timeout=20s --start-period=20s --retries=3 \
    CMD ["refseg", "--help"]

ENTRYPOINT ["refseg"]
CMD ["--help"]

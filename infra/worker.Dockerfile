# The GPU Prefect worker of infra/compose.yaml: CUDA + the project, built from the repository root:
#   docker build -f infra/worker.Dockerfile -t pixart-worker .
# Only BuildKit (Docker's default builder since 23.0) reads worker.Dockerfile.dockerignore beside this
# file; the legacy builder (DOCKER_BUILDKIT=0) would send .env, .dvc/config.local and data.
# The devel image carries nvcc: DeepSpeed JIT-compiles its CUDA ops (fused optimizers, NCCL helpers)
# on first use. CUDA_VERSION must have the major version of torch's own CUDA build.
ARG CUDA_VERSION=12.8.1
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu24.04

# Python 3.11 (the project pins it; Ubuntu 24.04 ships 3.12) from uv's standalone builds.
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_EXTENSIONS_DIR=/cache/torch_extensions \
    PREFECT_HOME=/cache/prefect \
    MLFLOW_DISABLE_TELEMETRY=true
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ninja-build openssh-client pdsh \
    && rm -rf /var/lib/apt/lists/* \
    && uv python install 3.11 \
    && uv venv --python 3.11 /opt/venv

WORKDIR /app
# Dependencies first (cached across code changes); torch from PyPI is its CUDA build.
COPY pyproject.toml README.md ./
RUN uv pip install torch==2.13.0 \
    && uv pip install -r pyproject.toml
COPY . .
# A builder that skipped worker.Dockerfile.dockerignore fails here instead of shipping the secrets.
RUN if [ -n "$(find . -path ./.dvc/config.local -o -name '*.env' -o -name '.env.*')" ]; then \
        echo "secrets in the build context: build with BuildKit (worker.Dockerfile.dockerignore)" >&2; exit 1; \
    fi \
    && uv pip install --no-deps -e .

CMD ["prefect", "worker", "start", "--pool", "gpu-compose", "--type", "process"]

# syntax=docker/dockerfile:1
# torl rollout for NVIDIA GPUs: CUDA vLLM, the exact set in requirements/constraints-gpu.txt
# (resolved with the learner's by scripts/resolve_gpu_pins.py; the driver comes from the node
# through the NVIDIA container toolkit / GPU operator).
# Base: nvidia/cuda devel, CUDA 13.0 = the CUDA of vLLM 0.32's torch 2.13.0 wheel. vLLM's
# FlashInfer attention backend JIT-compiles kernels it does not ship prebuilt with nvcc and the CUDA
# headers, and Triton builds its launchers with the C compiler; a python:slim base has neither.
# Python 3.11 (the project's interpreter) is a relocatable CPython build installed by uv, since
# Ubuntu 24.04 ships 3.12.
# The final stage keeps nvcc and gcc on purpose: FlashInfer and Triton compile kernels and kernel
# launchers just in time (under /tmp).
# Build from the repository root:
#   docker build -f docker/rollout-gpu.Dockerfile -t registry.example.com/torl/torl-rollout-gpu:0.1.0 .

FROM ghcr.io/astral-sh/uv:0.9.7 AS uv

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PYTHON_INSTALL_DIR=/opt/python
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install 3.11.11 && uv venv --seed --python 3.11.11 /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints-gpu.txt requirements/constraints-gpu.txt
RUN pip install -c requirements/constraints-gpu.txt grpcio-tools vllm
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY services/ services/
RUN python scripts/gen_protos.py \
 && pip install -c requirements/constraints-gpu.txt ".[rollout-gpu]" \
 && pip uninstall -y grpcio-tools

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:13.2.0-7ubuntu1 libc6-dev=2.39-0ubuntu8.6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf TRITON_CACHE_DIR=/tmp/triton VLLM_CACHE_ROOT=/tmp/vllm CUDA_HOME=/usr/local/cuda \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 50053 9103
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50053"]
ENTRYPOINT ["torl"]
CMD ["rollout", "serve"]

# syntax=docker/dockerfile:1
# torl learner for NVIDIA GPUs: CUDA torch + DeepSpeed (NCCL), the exact set in
# requirements/constraints-gpu.txt (resolved with the rollout's by scripts/resolve_gpu_pins.py, so
# the NCCL weight path pairs the two images on one torch).
# Base: nvidia/cuda devel, CUDA 13.0 = the CUDA of the torch 2.13.0 wheel (its nvidia-*-cu13 /
# nvidia-cuda-runtime 13.0 libraries). DeepSpeed JIT-compiles its CUDA ops (FusedAdam, the ZeRO-3
# and CPU-Adam kernels) at first use with nvcc and the CUDA headers, which the pip wheels do not
# carry; a python:slim base has neither. Python 3.11 (the project's interpreter) is a relocatable
# CPython build installed by uv, since Ubuntu 24.04 ships 3.12.
# The final stage keeps nvcc, g++ and the headers on purpose: DeepSpeed and Triton compile their
# ops and kernel launchers just in time (into TORCH_EXTENSIONS_DIR / TRITON_CACHE_DIR under /tmp).
# Build from the repository root:
#   docker build -f docker/learner-gpu.Dockerfile -t registry.example.com/torl/torl-learner-gpu:0.1.0 .

FROM ghcr.io/astral-sh/uv:0.9.7 AS uv

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0 \
    UV_PYTHON_INSTALL_DIR=/opt/python
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install 3.11.11 && uv venv --seed --python 3.11.11 /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints-gpu.txt requirements/constraints-gpu.txt
RUN pip install -c requirements/constraints-gpu.txt grpcio-tools torch \
 && pip install -c requirements/constraints-gpu.txt deepspeed
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY services/ services/
RUN python scripts/gen_protos.py \
 && pip install -c requirements/constraints-gpu.txt ".[learner-gpu]" \
 && pip uninstall -y grpcio-tools

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:13.2.0-7ubuntu1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY data/ /opt/torl/data/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf TORCH_EXTENSIONS_DIR=/tmp/torch_extensions TRITON_CACHE_DIR=/tmp/triton \
    CUDA_HOME=/usr/local/cuda NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 50054 9104 29500
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50054"]
ENTRYPOINT ["torl"]
CMD ["learner", "serve"]

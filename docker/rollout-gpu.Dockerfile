# syntax=docker/dockerfile:1
# torl rollout for NVIDIA GPUs: CUDA vLLM (wheels from PyPI bring the CUDA runtime libraries; the
# driver comes from the node through the NVIDIA container toolkit / GPU operator).
# The final stage keeps gcc and libc6-dev on purpose: Triton (used by vLLM kernels) compiles its
# small kernel-launcher modules with the system C compiler at run time.
# Build from the repository root:
#   docker build -f docker/rollout-gpu.Dockerfile -t registry.example.com/torl/torl-rollout-gpu:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/constraints-gpu.txt docker/constraints-gpu.txt
RUN pip install -c docker/constraints-gpu.txt grpcio-tools vllm
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY services/ services/
RUN python scripts/gen_protos.py \
 && pip install -c docker/constraints-gpu.txt ".[rollout-gpu]" \
 && pip uninstall -y grpcio-tools

FROM python:3.11.11-slim-bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf TRITON_CACHE_DIR=/tmp/triton VLLM_CACHE_ROOT=/tmp/vllm \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 50053 9103
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50053"]
ENTRYPOINT ["torl"]
CMD ["rollout", "serve"]

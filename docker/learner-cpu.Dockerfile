# syntax=docker/dockerfile:1
# torl learner on CPU (the small CPU profile): CPU torch + DeepSpeed on gloo, the same pins as the
# local/CI environment (requirements/constraints-cpu.txt).
# The final stage keeps g++ on purpose: DeepSpeed JIT-compiles its CPU ops (shm_comm) on first use.
# Build from the repository root:
#   docker build -f docker/learner-cpu.Dockerfile -t registry.example.com/torl/torl-learner-cpu:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0 \
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
RUN python scripts/gen_protos.py \
 && pip install -c requirements/constraints-cpu.txt ".[learner-cpu]" \
 && pip uninstall -y grpcio-tools

FROM python:3.11.11-slim-bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/venv /opt/venv
COPY data/ /opt/torl/data/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
USER 10001:10001
WORKDIR /tmp
EXPOSE 50054 9104
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50054"]
ENTRYPOINT ["torl"]
CMD ["learner", "serve"]

# syntax=docker/dockerfile:1
# torl reward: answer extraction and verification (math-verify, sympy). CPU only, no torch.
# Build from the repository root:
#   docker build -f docker/reward.Dockerfile -t registry.example.com/torl/torl-reward:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/constraints-cpu.txt requirements/constraints-cpu.txt
RUN pip install -c requirements/constraints-cpu.txt grpcio-tools
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY services/ services/
RUN python scripts/gen_protos.py \
 && pip install -c requirements/constraints-cpu.txt ".[reward]" \
 && pip uninstall -y grpcio-tools

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 50052 9102
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50052"]
ENTRYPOINT ["torl"]
CMD ["reward", "serve"]

# syntax=docker/dockerfile:1
# torl executor: gateway and runner roles (one image). Carries the Python runtime and the math
# libraries that sandboxed code imports (sympy, numpy, scipy, mpmath) and both sandbox backends
# (runsc for gVisor, bubblewrap). In a cluster the runner pods run under the gVisor RuntimeClass.
# Build from the repository root:
#   docker build -f docker/executor.Dockerfile -t registry.example.com/torl/torl-executor:0.1.0 .

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
 && pip install -c requirements/constraints-cpu.txt ".[executor,sandbox]" \
 && pip uninstall -y grpcio-tools

FROM python:3.11.11-slim-bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap=0.8.0-2+deb12u1 runsc=0.0~20221219.0-2+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 torl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-I", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["torl"]
CMD ["executor", "serve"]

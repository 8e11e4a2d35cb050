# pgtenant container image: the proxy installed from this source tree, running as a non-root user.
#
#   docker build -t pgtenant:0.1.0 .
#   docker run --rm -p 6432:6432 -p 9187:9187 \
#     -v "$PWD/pgtenant.toml:/etc/pgtenant/pgtenant.toml:ro" \
#     -v "$PWD/secrets:/run/secrets/pgtenant:ro" pgtenant:0.1.0
#
# Configuration: mount the TOML file at /etc/pgtenant/pgtenant.toml (the default command reads it) and keep
# secrets apart, e.g. `secrets_file = "/run/secrets/pgtenant/secrets.toml"` with the TLS certificate and key
# next to it. Inside a container set `listen.host = "0.0.0.0"` (the default 127.0.0.1 is unreachable from
# outside it) and `metrics.host = "0.0.0.0"` for Prometheus and Kubernetes probes; the HEALTHCHECK below
# reaches /healthz on 127.0.0.1:9187 either way. Validate a config with
#   docker run --rm -v "$PWD/config:/etc/pgtenant:ro" pgtenant:0.1.0 check-config /etc/pgtenant/pgtenant.example.toml
# Ports: 6432 PostgreSQL protocol (clients), 9187 HTTP (/metrics, /healthz, /readyz).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with pgtenant and its pinned dependencies (wheels) ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# gcc compiles the relay's hot path (setup.py, Cython); only this stage has it, the runtime image does not.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/pgtenant \
    && /opt/pgtenant/bin/pip install --no-cache-dir . \
    && /opt/pgtenant/bin/pgtenant --help >/dev/null \
    && /opt/pgtenant/bin/python -c "from proxy import _accel; s = _accel.status(); assert set(s.values()) == {'compiled'}, s"

# --- runtime: the same slim base, the venv, a non-root user ----------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pgtenant" \
      org.opencontainers.image.description="PostgreSQL wire-protocol proxy that isolates SaaS tenants" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/pgtenant/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 pgtenant \
    && useradd --system --uid 10001 --gid pgtenant --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pgtenant \
    && mkdir -p /etc/pgtenant /run/secrets/pgtenant
COPY --from=build /opt/pgtenant /opt/pgtenant
COPY config/pgtenant.example.toml config/secrets.example.toml /usr/share/doc/pgtenant/
USER 10001:10001
EXPOSE 6432 9187
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgtenant"]
CMD ["run", "--config", "/etc/pgtenant/pgtenant.toml"]

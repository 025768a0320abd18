# Pushwire server image.   docker build -t pushwire .   (or: make image [BASE=...] [TAG=...])
#
# BASE: python:3.12-slim, or any Debian-based image with python3 >= 3.11 and its venv module.
# Configuration: PUSHWIRE_* environment variables (PUSHWIRE_APP_ID / _KEY / _SECRET,
# PUSHWIRE_REDIS_URL, PUSHWIRE_PORT, PUSHWIRE_DRAIN_DELAY, ...) and/or a TOML file mounted at
# /etc/pushwire/pushwire.toml (PUSHWIRE_CONFIG names it; the image ships one with no apps).
ARG BASE=python:3.12-slim

# ---- build: a virtual environment in /opt/pushwire (pip and its wheels stay in this stage)
FROM ${BASE} AS build
# a CA bundle for pip behind a TLS-intercepting proxy (make image mounts the host's with podman)
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pushwire ./pushwire
RUN python3 -m venv /opt/pushwire \
 && /opt/pushwire/bin/python -m pip install -q ${PIP_CERT:+--cert "$PIP_CERT"} . \
 && /opt/pushwire/bin/python -m pip uninstall -q -y pip setuptools \
 && /opt/pushwire/bin/pushwire --version

# ---- runtime: the base image, the venv, an unprivileged user; no compiler, no pip
FROM ${BASE}
RUN (getent group 10001 || groupadd --system --gid 10001 pushwire) \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pushwire \
 && mkdir -p /etc/pushwire
COPY --from=build /opt/pushwire /opt/pushwire
COPY deploy/pushwire.toml /etc/pushwire/pushwire.toml
ENV PATH=/opt/pushwire/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PUSHWIRE_HOST=0.0.0.0 \
    PUSHWIRE_CONFIG=/etc/pushwire/pushwire.toml
USER 10001:10001
EXPOSE 6001
# SIGTERM drains: /ready answers 503 for [server] drain_delay seconds (default 3), then the
# clients are told to reconnect (4200), webhooks and cluster state are flushed, exit code 0
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["pushwire", "health", "--quiet"]
ENTRYPOINT ["pushwire"]
CMD ["serve"]

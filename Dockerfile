# syntax=docker/dockerfile:1
#
# One image for every role: `sfu serve` (signalling and its shard processes),
# `sfu token`, and `sfu-drain` (the Kubernetes preStop hook, deploy/docker/sfu_drain.py).
#
#   docker build -t sfu .
#   docker run --rm --network host -e SFU_AUTH_SECRET=$(openssl rand -hex 32) \
#       -e SFU_RTC_HOST=<this host's address> sfu
#
# SFU_RTC_HOST is bound by the shards and put in their ICE candidates, so it must be
# an address of the host that clients reach (hence --network host). Layout and
# Kubernetes manifests: deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the Cython fast path needs a C compiler; every dependency is a wheel ---
FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sfu
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sfu ./sfu
# setup.py cythonizes sfu/_fastpath.pyx and compiles it; the import proves it is there.
RUN /opt/sfu/bin/pip install --no-cache-dir . \
 && /opt/sfu/bin/python -c "import sfu._fastpath, sfu.cli" \
 && /opt/sfu/bin/sfu --version

# --- runtime: the venv, tini as PID 1, an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sfu \
 && useradd --system --uid 10001 --gid sfu --home-dir /var/lib/sfu --create-home \
      --shell /usr/sbin/nologin sfu
COPY --from=build /opt/sfu /opt/sfu
COPY --chmod=0755 deploy/docker/sfu_drain.py /usr/local/bin/sfu-drain
ENV PATH=/opt/sfu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SFU_HTTP_HOST=0.0.0.0 \
    SFU_RECORDINGS=/var/lib/sfu/recordings
WORKDIR /var/lib/sfu
USER 10001:10001
# HTTP (WHIP/WHEP, the room API, /metrics, /healthz, the admin API), then one UDP
# port per shard from SFU_RTC_PORT (50000): shard i uses 50000 + i.
EXPOSE 8080/tcp 50000-50063/udp
# tini forwards SIGTERM to `sfu serve` and reaps what its children leave behind.
ENTRYPOINT ["tini", "--", "sfu", "serve"]

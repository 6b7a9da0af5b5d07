# Image of the enrichment worker: `enrich-worker run` by default, and also the Cloudflare API
# simulator (`simulate`) and the one-shot `enrich` command.
#
#   docker build -t cf-email-enrich-worker:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)" .
#   docker run --rm cf-email-enrich-worker:0.1.0 --help
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount lines.
# The worker drains for up to pipeline.shutdown_grace_s (30 s) after SIGTERM: give it more
# than that to stop (docker stop -t 45, compose stop_grace_period, k8s
# terminationGracePeriodSeconds), not Docker's default 10 s.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel is built from (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY worker ./worker

# The project's wheel plus a wheel of every runtime dependency (no dev extras); all of them
# have binary wheels for linux/amd64 and linux/arm64, so no compiler is needed.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel . --wheel-dir /wheels


FROM python:3.11-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""

LABEL org.opencontainers.image.title="cf-email-enrich-worker" \
      org.opencontainers.image.description="Kafka worker that enriches Cloudflare Email Security investigate IDs with their detections" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

RUN groupadd --system --gid 10001 enrich \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin enrich

# Installed from the builder's wheels only (--no-index); the wheels are bind-mounted, not
# copied, so they add nothing to the image. Bytecode is compiled here, at build time, so a
# read-only root filesystem costs nothing at start-up.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --compile \
        /wheels/cf_email_enrich_worker-*.whl \
    && enrich-worker --version

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENRICH_METRICS__HOST=0.0.0.0 \
    ENRICH_LOG__FORMAT=json

WORKDIR /app
USER 10001:10001

# /metrics, /healthz (liveness) and /readyz (readiness) of `enrich-worker run`.
EXPOSE 9108

# Health of `run`: `enrich-worker check-health` asks /healthz (the run loop turns, no stuck
# partition) and /readyz (partitions assigned, credentials accepted) on 127.0.0.1 and
# metrics.port (from ENRICH_METRICS__PORT or the config file); exit 0 when both answer 200.
# Stdlib HTTP only, as the slim image has no curl. Other commands (simulate) need their own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["enrich-worker", "check-health", "--timeout", "2"]

ENTRYPOINT ["enrich-worker"]
CMD ["run"]

# syntax=docker/dockerfile:1
# Rillet broker image. Two stages: `build` turns this checkout and its dependencies into wheels;
# the final stage installs those wheels only (no compiler, no source tree, no build backend) and
# runs as an unprivileged user. Build: docker build -t rillet:0.1.0 .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rillet/ rillet/
COPY node/ node/
COPY cluster/ cluster/
COPY client/ client/
# One wheel for rillet plus one per runtime dependency (grpcio & co. ship manylinux wheels).
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RILLET_LISTEN=0.0.0.0:9091 \
    RILLET_DATA_DIR=/var/lib/rillet
# A fixed uid/gid so that Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 rillet \
    && useradd --system --uid 10001 --gid rillet --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rillet \
    && mkdir -p /var/lib/rillet \
    && chown rillet:rillet /var/lib/rillet
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels rillet==0.1.0
USER 10001:10001
WORKDIR /var/lib/rillet
EXPOSE 9091
ENTRYPOINT ["rillet", "serve"]

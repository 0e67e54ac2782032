# syntax=docker/dockerfile:1
# Training and export jobs: torch (PyPI's build, CUDA 13; it runs on CPUs too) + timm + the
# training and export packages.
#   docker build -f docker/train.Dockerfile -t sdssl-train .
#   docker compose run --rm trainer scripts/retrain.sh --config configs/default.yaml --out runs/new
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/work \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# Compose runs this image as the host user (SDSSL_UID) so that runs/ and bundles it writes into
# bind mounts belong to that user: nothing below may depend on uid 10001.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3 \
    && groupadd --system --gid 10001 sdssl \
    && useradd --system --uid 10001 --gid sdssl --home-dir /work --shell /usr/sbin/nologin sdssl \
    && mkdir -p /work/runs /work/artifacts /work/bundles \
    && chmod 0777 /work/runs /work/artifacts /work/bundles
WORKDIR /work
COPY docker/requirements-train.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY training /work/training
COPY export /work/export
COPY configs /work/configs
COPY scripts /work/scripts
USER 10001:10001
ENTRYPOINT []
CMD ["python", "-m", "training", "--help"]

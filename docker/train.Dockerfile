# syntax=docker/dockerfile:1
# Training and export jobs: torch (PyPI's CUDA build) + timm + the training and export packages.
#   docker build -f docker/train.Dockerfile -t sdssl-train .
#   docker compose run --rm trainer scripts/retrain.sh --config configs/default.yaml --out runs/new

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/work \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 sdssl \
    && useradd --system --uid 10001 --gid sdssl --home-dir /work --shell /usr/sbin/nologin sdssl \
    && mkdir -p /work/runs /work/artifacts \
    && chown -R sdssl:sdssl /work
WORKDIR /work
COPY docker/requirements-train.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY --chown=sdssl:sdssl training /work/training
COPY --chown=sdssl:sdssl export /work/export
COPY --chown=sdssl:sdssl configs /work/configs
COPY --chown=sdssl:sdssl scripts /work/scripts
USER 10001:10001
ENTRYPOINT []
CMD ["python", "-m", "training", "--help"]

# syntax=docker/dockerfile:1
# The serving image: onnxruntime + FAISS + FastAPI, no torch.
#   docker build -f docker/serve.Dockerfile --target cpu -t sdssl-serve:cpu .
#   docker build -f docker/serve.Dockerfile --target gpu -t sdssl-serve:gpu .
# The GPU target is one CUDA major (13) throughout: onnxruntime-gpu and FAISS (faiss-gpu-cuvs)
# with CUDA, cuDNN and cuBLAS from NVIDIA's pinned pip wheels, so the host needs only the NVIDIA
# driver (>= 580) and the container toolkit. README "Supported GPUs" says which chips run it.
# BASE: any Debian-like image with python3 (3.11) and its venv module; the tests build a local
# one from Debian packages (no registry serves base images there).
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SDSSL_HOST=0.0.0.0 \
    SDSSL_PORT=8000 \
    SDSSL_BUNDLE=/bundles/default \
    SDSSL_DATA_DIR=/data
# One venv for the project's packages: the same steps work on python:3.11-slim and on a bare
# Debian python3, and its pip (pinned) resolves the CUDA wheels' version ranges.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3 \
    && groupadd --system --gid 10001 sdssl \
    && useradd --system --uid 10001 --gid sdssl --home-dir /app --shell /usr/sbin/nologin sdssl \
    && mkdir -p /app /data /bundles /images \
    && chown sdssl:sdssl /data
WORKDIR /app

FROM base AS deps-cpu
COPY docker/requirements-serve.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

FROM base AS deps-gpu
COPY docker/requirements-serve-gpu.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# Code last: a code change rebuilds only these small layers.
FROM deps-cpu AS cpu
COPY export/__init__.py export/manifest.py /app/export/
COPY service /app/service
COPY client/sdssl_client /app/sdssl_client
COPY scripts/common.bash scripts/reindex.sh scripts/reload.sh scripts/rollout.sh /app/scripts/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SDSSL_PORT', '8000') + '/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
# python -m service runs uvicorn with a 10 s graceful-shutdown timeout.
CMD ["python", "-m", "service"]

FROM deps-gpu AS gpu
ENV SDSSL_DEVICE=auto
COPY export/__init__.py export/manifest.py /app/export/
COPY service /app/service
COPY client/sdssl_client /app/sdssl_client
COPY scripts/common.bash scripts/reindex.sh scripts/reload.sh scripts/rollout.sh /app/scripts/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SDSSL_PORT', '8000') + '/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

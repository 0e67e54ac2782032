# syntax=docker/dockerfile:1
# The serving image: onnxruntime + FAISS + FastAPI, no torch.
#   docker build -f docker/serve.Dockerfile --target cpu -t sdssl-serve:cpu .
#   docker build -f docker/serve.Dockerfile --target gpu -t sdssl-serve:gpu .
# The GPU target takes CUDA and cuDNN from NVIDIA's pip wheels (onnxruntime-gpu[cuda,cudnn],
# faiss-gpu-cu12), so the host needs only the NVIDIA driver and the container toolkit.

FROM python:3.11.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    SDSSL_HOST=0.0.0.0 \
    SDSSL_PORT=8000 \
    SDSSL_BUNDLE=/bundles/default \
    SDSSL_DATA_DIR=/data
RUN groupadd --system --gid 10001 sdssl \
    && useradd --system --uid 10001 --gid sdssl --home-dir /app --shell /usr/sbin/nologin sdssl \
    && mkdir -p /app /data /bundles \
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
COPY scripts/reindex.sh scripts/reload.sh /app/scripts/
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
COPY scripts/reindex.sh scripts/reload.sh /app/scripts/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SDSSL_PORT', '8000') + '/readyz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

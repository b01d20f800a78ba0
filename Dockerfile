# Atelier service image. PyPI's torch wheels for Linux x86_64 are CUDA builds that carry their
# own CUDA runtime, so a slim Python base is a CUDA-capable PyTorch runtime: the host needs
# only the NVIDIA driver and the container toolkit (`docker run --gpus all ...`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ATELIER_HOST=0.0.0.0 \
    ATELIER_PORT=8000 \
    ATELIER_CATALOG_DIR=/opt/atelier/models \
    ATELIER_MODEL_DIR=/opt/atelier/models/cache \
    ATELIER_JOBS_DIR=/opt/atelier/var/jobs

RUN useradd --create-home --uid 10001 atelier
WORKDIR /opt/atelier

# Dependencies first, so code edits do not reinstall torch.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
RUN pip install .

COPY app app
COPY models/*.toml models/
RUN pip install --no-deps . \
 && atelier models pull \
 && mkdir -p /opt/atelier/var/jobs \
 && chown -R atelier:atelier /opt/atelier

USER atelier
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--no-access-log", "--timeout-graceful-shutdown", "30"]

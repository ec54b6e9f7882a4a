# The server on CPU: the reference model behind uvicorn (reference/server/app.py).
#
#   docker build -t llm-from-scratch .
#   docker run --rm -p 8000:8000 -v "$PWD/runs:/models:ro" \
#       -e LLMFS_SERVE_MODEL=/models/main -e LLMFS_SERVE_API_KEYS='["s3cret"]' llm-from-scratch
#
# Settings are LLMFS_SERVE_* environment variables (reference/server/settings.py); keys can come
# from a file instead (LLMFS_SERVE_API_KEYS_FILE=/run/secrets/api_keys). The model is not in the
# image: mount a run or checkpoint directory at /models. For a GPU, see Dockerfile.cuda.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, the CPU build of the release constraints.txt pins (as the README installs it);
# then the project with the server's extra, under the same constraints so torch stays.
COPY constraints.txt ./
# DL3013 (unpinned pip install): constraints.txt or the base image pins torch; hadolint
# does not read a constraints file.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt \
        --index-url https://download.pytorch.org/whl/cpu torch
COPY pyproject.toml README.md ./
COPY reference ./reference
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt ".[serve]" \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin llmfs

# A system user without a shell (numeric, so Kubernetes' runAsNonRoot can check it);
# the model directory is mounted read-only for it.
USER 10001

VOLUME ["/models"]
ENV LLMFS_SERVE_MODEL=/models/main \
    LLMFS_SERVE_HOST=0.0.0.0 \
    LLMFS_SERVE_PORT=8000
EXPOSE 8000

# Readiness: /health answers 503 until the model is loaded and warmed (no curl in slim images).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["uvicorn", "reference.server.app:app", "--host", "0.0.0.0", "--port", "8000"]

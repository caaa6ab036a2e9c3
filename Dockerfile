# The API and worker image. No local model: a deployment points OPENAI_BASE_URL at a real
# OpenAI-compatible server. One image, three roles: `serve` (default), `worker`, `migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SELFINSTRUCT_HOST=0.0.0.0 \
    SELFINSTRUCT_PORT=8000 \
    SELFINSTRUCT_DATA_DIR=/data

WORKDIR /srv/selfinstruct

COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".[report]" \
    && rm -rf build *.egg-info \
    && useradd --create-home --uid 10001 selfinstruct \
    && mkdir -p /data \
    && chown selfinstruct /data

USER selfinstruct
EXPOSE 8000
ENTRYPOINT ["selfinstruct"]
CMD ["serve"]

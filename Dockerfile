# The API and worker image (no local model: production points OPENAI_BASE_URL at a real server).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SELFINSTRUCT_DATA_DIR=/data

WORKDIR /srv/selfinstruct
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install . \
    && useradd --create-home --uid 10001 selfinstruct \
    && mkdir -p /data && chown selfinstruct /data

USER selfinstruct
EXPOSE 8000
ENTRYPOINT ["selfinstruct"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-embedded"]

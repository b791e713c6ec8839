FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY chi_redis ./chi_redis
COPY handlers ./handlers
COPY config ./config
RUN pip install --no-cache-dir ".[console]"
USER nobody

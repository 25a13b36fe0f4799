# The hub's production image: `python -m hub serve` with HUB_EMBEDDED=0 (real mongod and
# Redis from the environment), as an unprivileged user. The same image runs the worker
# (`python -m hub worker`). Build: docker build -t clinic-hub .

FROM node:20-slim AS web
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-fund --no-audit
# The client SDK with socket.io-client inside, for the web console.
COPY clients/js clients/js
RUN node clients/js/build.mjs

FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/prod.lock requirements/
COPY pyproject.toml README.md ./
COPY hub hub
COPY handlers handlers
COPY channels channels
COPY storage storage
COPY workers workers
COPY --from=web /src/hub/server/web/vendor/hub-client.js hub/server/web/vendor/
# Wheels of the hub and its runtime dependencies only (no embedded stack, no tests),
# at the locked versions.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements/prod.lock \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# DejaVu Sans: the font of the PDF in patients' exports (the PDF core fonts are Latin-1 only).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hub
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels clinic-hub \
    && rm -rf /wheels
USER hub
WORKDIR /home/hub
ENV HUB_EMBEDDED=0 \
    HUB_HOST=0.0.0.0 \
    HUB_PORT=8080 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# SIGTERM drains the hub (HUB_SHUTDOWN_TIMEOUT); give it that long before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=3)"]
CMD ["python", "-m", "hub", "serve"]

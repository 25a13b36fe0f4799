FROM python:3.11-slim
RUN useradd --create-home --uid 10001 hub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub hub
COPY handlers handlers
COPY channels channels
COPY storage storage
COPY workers workers
RUN pip install --no-cache-dir . && rm -rf /root/.cache
USER hub
ENV HUB_EMBEDDED=0 HUB_HOST=0.0.0.0
EXPOSE 8080
CMD ["python", "-m", "hub", "serve"]

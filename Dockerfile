# Flightline control plane + Flight front door, with the native runtimes (runtime processes are spawned
# locally by the supervisor). Build: docker build -t flightline .
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY flightline ./flightline
RUN pip install --no-cache-dir .

ENV FLIGHTLINE_DATA_DIR=/data FLIGHTLINE_HOST=0.0.0.0
VOLUME /data
EXPOSE 50051 8815
CMD ["flightline", "serve"]

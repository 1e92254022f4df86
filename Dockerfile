# cx-monitor: one image for every `cxmon` command (worker by default, simulate, alerts, ...).
#
#   docker build -t cx-monitor:0.1.0 .
#   docker run --rm -e CXMON_BROKER_URL=kafka://broker:9092 cx-monitor:0.1.0            # worker
#   docker run --rm -e CXMON_BROKER_URL=kafka://broker:9092 cx-monitor:0.1.0 alerts     # any command
#
# The catalog ships at /etc/cxmon/catalog.yaml (the documented example); mount your own over it.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root uid/gid, and the data directory it owns: a named volume mounted on /data
# starts with this ownership, so the worker can write there without running as root.
RUN groupadd --system --gid 10001 cxmon \
    && useradd --system --uid 10001 --gid cxmon --home-dir /home/cxmon --create-home \
        --shell /usr/sbin/nologin cxmon \
    && mkdir -p /data \
    && chown cxmon:cxmon /data

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every edit of the sources.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY deploy/catalog.example.yaml /etc/cxmon/catalog.yaml

# The project itself: no dev or broker extras (Kafka is a separate service in production).
COPY streams/ streams/
COPY agents/ agents/
COPY models/ models/
RUN pip install . \
    && rm -rf /src

ENV CXMON_CATALOG=/etc/cxmon/catalog.yaml \
    CXMON_DATA_DIR=/data

WORKDIR /home/cxmon
USER cxmon

# The worker's web server: /metrics (Prometheus). Set CXMON_WEB_HOST=0.0.0.0 to reach it.
EXPOSE 6066

ENTRYPOINT ["cxmon"]
CMD ["worker"]

# syntax=docker/dockerfile:1
# simrec images, built by the same pinned install as the README (scripts/install.sh).
#   docker build --target server -t simrec-server .   # `simrec serve`: REST + bearer token, 8080
#   docker build --target app    -t simrec-app .      # `simrec app`: Streamlit, 8501
# Both run as the unprivileged user simrec (uid 10001) and report their health.
# Configuration: SIMREC_CONFIG (defaults baked in; add an overlay, e.g. a mounted ConfigMap:
# SIMREC_CONFIG=/opt/simrec/conf/simrec.yaml:/etc/simrec/cluster.yaml). Token: SIMREC_API_TOKEN.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: venv + simrec
FROM ${PYTHON_IMAGE} AS build
WORKDIR /opt/simrec
# Images serve and show; they do not train, so no Horovod build and no system packages.
ENV SIMREC_VENV=/opt/simrec/.venv \
    PYTHON=python3.11 \
    PIP_NO_CACHE_DIR=1
# The pinned dependencies first: this layer is rebuilt only when the pins change.
COPY requirements/ requirements/
COPY scripts/install.sh scripts/install.sh
RUN bash scripts/install.sh --no-apt --no-horovod --deps-only
COPY pyproject.toml setup.py README.md ./
COPY conf/ conf/
COPY src/ src/
RUN bash scripts/install.sh --no-apt --no-horovod \
    && .venv/bin/python -m pip check \
    && .venv/bin/simrec --help > /dev/null

# ---------------------------------------------------------------- runtime: non-root
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 simrec \
    && useradd --system --uid 10001 --gid simrec --create-home --home-dir /home/simrec \
       --shell /usr/sbin/nologin simrec
# Root owns the code and the venv; the service user can only read them.
COPY --from=build /opt/simrec /opt/simrec
ENV PATH=/opt/simrec/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    SIMREC_CONFIG=/opt/simrec/conf/simrec.yaml
WORKDIR /home/simrec
USER 10001:10001

# ---------------------------------------------------------------- server: simrec serve
FROM runtime AS server
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
ENTRYPOINT ["simrec", "serve"]
CMD ["--model-uri", "models:/simrec-fashion@champion", "--host", "0.0.0.0", "--port", "8080"]

# ---------------------------------------------------------------- app: simrec app (Streamlit)
FROM runtime AS app
ENV STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["simrec", "app"]
CMD ["--address", "0.0.0.0", "--port", "8501"]

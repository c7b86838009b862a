# syntax=docker/dockerfile:1.7
# One image for every Airflow service of docker-compose.yml and for the `moderation` CLI.
#
# The DAGs, the PostgreSQL DDL and the shipped model are COPIED in (nothing is
# mounted from the host), so a running stack is exactly the image it was built
# from. Dependencies come from the committed lock file, constraints.txt.
#
#   docker build -t review-moderation:local .
#   docker build --build-arg PROJECT_EXTRAS=celery .

############################ build: a virtualenv from the lock ############################
FROM python:3.11-slim AS build

ARG UV_VERSION=0.13.9
# Optional extras of pyproject.toml, e.g. "celery" for the celery profile (empty: none).
ARG PROJECT_EXTRAS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never

RUN python -m pip install "uv==${UV_VERSION}" \
 && uv venv --python /usr/local/bin/python3.11 /opt/venv

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY moderation/ ./moderation/

# Install with the lock, then prove it: every installed distribution must be
# pinned in constraints.txt at that version, so an extra that is not locked
# fails the build instead of pulling whatever is newest today.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python -c constraints.txt \
        "/src${PROJECT_EXTRAS:+[${PROJECT_EXTRAS}]}" \
 && uv pip check --python /opt/venv/bin/python \
 && uv pip freeze --python /opt/venv/bin/python | grep -v '^review-moderation' \
        | tr 'A-Z_' 'a-z-' | sort > /tmp/installed.txt \
 && grep -vE '^[[:space:]]*(#|$)' constraints.txt | tr 'A-Z_' 'a-z-' | sort > /tmp/locked.txt \
 && comm -23 /tmp/installed.txt /tmp/locked.txt > /tmp/unlocked.txt \
 && if [ -s /tmp/unlocked.txt ]; then \
        echo "installed but not pinned by constraints.txt (regenerate the lock):" >&2; \
        cat /tmp/unlocked.txt >&2; exit 1; \
    fi

############################ runtime ############################
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="review-moderation" \
      org.opencontainers.image.description="Nightly Korean review moderation: Airflow 3 + char-LSTM"

ARG AIRFLOW_UID=50000

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/moderation/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    MODERATION_SQL_DIR=/opt/moderation/sql \
    MODERATION_MODEL_DIR=/opt/moderation/models/ko-char-lstm-v1 \
    MODERATION_HOME=/opt/moderation/var \
    MODERATION_MODELS_DIR=/opt/moderation/var/models

# Non-root user; its home is AIRFLOW_HOME. Writable places are only the ones
# compose mounts named volumes on (they inherit this ownership when created).
RUN groupadd --gid "${AIRFLOW_UID}" airflow \
 && useradd --uid "${AIRFLOW_UID}" --gid airflow --home-dir /opt/airflow --create-home \
        --shell /usr/sbin/nologin airflow \
 && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/moderation/var/models /opt/moderation/var/runs \
 && chown -R airflow:airflow /opt/airflow /opt/moderation/var

COPY --from=build /opt/venv /opt/venv
# Read-only for the service user: code and data of record belong to the image.
COPY dags/ /opt/moderation/dags/
COPY sql/ /opt/moderation/sql/
COPY models/ /opt/moderation/models/
COPY docker/airflow-init.sh docker/http_ok.py /opt/moderation/docker/

USER airflow
WORKDIR /opt/airflow

# Fail the build, not the first night, when the console script or the model is broken.
RUN moderation --version \
 && python -c "from moderation.model import verify_bundle; from moderation import config; verify_bundle(config.default_model_dir())"

EXPOSE 8080
CMD ["airflow", "version"]

# syntax=docker/dockerfile:1.7
# The images of every Airflow service of docker-compose.yml and of the `moderation` CLI.
#
# The DAGs, the PostgreSQL DDL and the shipped model are COPIED in (nothing is
# mounted from the host), so a running stack is exactly the image it was built
# from. Dependencies come from the committed lock files: constraints.txt for
# the default CPU image, constraints-gpu.txt for the GPU image.
#
#   docker build -t review-moderation:local .                                   # CPU (the default target)
#   docker build --build-arg PROJECT_EXTRAS=celery .
#   docker build --target runtime-gpu --build-arg PROJECT_EXTRAS=celery -t review-moderation:local-gpu .
#
# The GPU image carries TensorFlow built with CUDA and NVIDIA's CUDA/cuDNN
# libraries as Python wheels; the host provides only the driver (NVIDIA
# Container Toolkit). It also starts on a machine without a GPU, on the CPU.

############################ build: virtualenvs from the locks ############################
FROM python:3.11-slim AS build-base

ARG UV_VERSION=0.13.9

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never

# A C compiler for the package's one extension (moderation/_lstm_cell.c, the LSTM step NumPy scores with);
# only this stage has it: the runtime copies the built virtualenv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python -m pip install "uv==${UV_VERSION}" \
 && uv venv --python /usr/local/bin/python3.11 /opt/venv

WORKDIR /src
COPY pyproject.toml setup.py constraints.txt constraints-gpu.txt README.md ./
COPY moderation/ ./moderation/
# Package data of the wheel (pyproject.toml): the shipped model and the PostgreSQL DDL.
COPY models/ko-char-lstm-v3/ ./models/ko-char-lstm-v3/
COPY sql/ ./sql/
COPY docker/install-locked.sh /usr/local/bin/install-locked.sh

# TensorFlow for CPU, with the lock constraints.txt.
FROM build-base AS build
# Optional extras of pyproject.toml besides the TensorFlow variant, e.g. "celery" (empty: none).
ARG PROJECT_EXTRAS=""
RUN --mount=type=cache,target=/root/.cache/uv \
    install-locked.sh constraints.txt "cpu${PROJECT_EXTRAS:+,${PROJECT_EXTRAS}}"

# TensorFlow with CUDA, with the lock constraints-gpu.txt (several GB of NVIDIA wheels).
FROM build-base AS build-gpu
ARG PROJECT_EXTRAS=""
RUN --mount=type=cache,target=/root/.cache/uv \
    install-locked.sh constraints-gpu.txt "gpu${PROJECT_EXTRAS:+,${PROJECT_EXTRAS}}"

############################ runtime: everything but the virtualenv ############################
FROM python:3.11-slim AS runtime-base

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
    MODERATION_MODEL_DIR=/opt/moderation/models/ko-char-lstm-v3 \
    MODERATION_HOME=/opt/moderation/var \
    MODERATION_MODELS_DIR=/opt/moderation/var/models

# Non-root user; its home is AIRFLOW_HOME. Writable places are only the ones
# compose mounts named volumes on (they inherit this ownership when created).
RUN groupadd --gid "${AIRFLOW_UID}" airflow \
 && useradd --uid "${AIRFLOW_UID}" --gid airflow --home-dir /opt/airflow --create-home \
        --shell /usr/sbin/nologin airflow \
 && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/moderation/var/models /opt/moderation/var/runs \
 && chown -R airflow:airflow /opt/airflow /opt/moderation/var

# Read-only for the service user: code and data of record belong to the image.
COPY dags/ /opt/moderation/dags/
COPY sql/ /opt/moderation/sql/
COPY models/ /opt/moderation/models/
COPY docker/airflow-init.sh docker/http_ok.py /opt/moderation/docker/

USER airflow
WORKDIR /opt/airflow
EXPOSE 8080
CMD ["airflow", "version"]

############################ runtime-gpu: the GPU worker of the compose profile gpu ############################
FROM runtime-base AS runtime-gpu

# Take GPU memory as needed instead of all of it at start: the worker shares
# the device with nothing else, but a second process (a retry, `moderation
# predict`) must still fit.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true
COPY --from=build-gpu /opt/venv /opt/venv

# Fail the build, not the first night, when the console script, the model, the compiled LSTM step or the CUDA
# build is broken. (Building needs no GPU: TensorFlow reports the CUDA build and falls back to the CPU.)
RUN moderation --version \
 && python -c "from moderation.model import verify_bundle; from moderation import config; verify_bundle(config.default_model_dir())" \
 && python -c "from moderation import numpy_lstm as n; assert n.compiled_cell(), n.compiled_cell_problem()" \
 && python -c "import tensorflow as tf; assert tf.test.is_built_with_cuda(), 'TensorFlow without CUDA in the GPU image'"

############################ runtime: the default target (CPU) ############################
FROM runtime-base AS runtime

COPY --from=build /opt/venv /opt/venv

# Fail the build, not the first night, when the console script, the model or the compiled LSTM step is broken.
RUN moderation --version \
 && python -c "from moderation.model import verify_bundle; from moderation import config; verify_bundle(config.default_model_dir())" \
 && python -c "from moderation import numpy_lstm as n; assert n.compiled_cell(), n.compiled_cell_problem()"

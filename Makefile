# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The GPU variant lives in its own virtualenv: tensorflow[and-cuda] and
# tensorflow-cpu both provide the `tensorflow` module and must never share one.
GPU_VENV := .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_STAMP := $(GPU_VENV)/.installed

.PHONY: install install-gpu demo test test-fast bench bench-scheduler up down clean

# Bytecode compiled at install, as pip does by default: where PYTHONDONTWRITEBYTECODE is set (as in the image), every
# process would otherwise compile TensorFlow's, Keras' and Airflow's sources again (seconds per process).
$(STAMP): pyproject.toml constraints.txt setup.py moderation/_lstm_cell.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -c constraints.txt -e '.[cpu,test]'
	$(PY) -m compileall -q moderation
	touch $(STAMP)

install: $(STAMP)

## TensorFlow built with CUDA (several GB of NVIDIA wheels) into .venv-gpu; runs on CPU-only machines too.
$(GPU_STAMP): pyproject.toml constraints-gpu.txt setup.py moderation/_lstm_cell.c
	test -x $(GPU_PY) || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install -q --upgrade pip uv
	$(GPU_VENV)/bin/uv pip install --python $(GPU_PY) --compile-bytecode -c constraints-gpu.txt -e '.[gpu,test]'
	$(GPU_PY) -m compileall -q moderation
	touch $(GPU_STAMP)

install-gpu: $(GPU_STAMP)

## Install everything, seed the embedded SQLite database and run the nightly DAG on it (scripts/demo.py, not part of the package).
demo: $(STAMP)
	$(PY) scripts/demo.py

## Install everything and run the whole test suite (SQLite and PostgreSQL).
test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not postgres"

bench: $(STAMP)
	$(PY) benchmarks/bench.py

## The nightly DAG under a real Airflow scheduler (LocalExecutor, PostgreSQL), 100k and 1M reviews: docs/bench_scheduler.json.
bench-scheduler: $(STAMP)
	$(PY) benchmarks/scheduler_night.py --reuse-db

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf var .pytest_cache

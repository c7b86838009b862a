# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench up down clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Install everything, seed the embedded SQLite database and run the nightly DAG on it.
demo: $(STAMP)
	$(PY) -m moderation.demo

## Install everything and run the whole test suite (SQLite and PostgreSQL).
test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not postgres"

bench: $(STAMP)
	$(PY) -m moderation.bench

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf var .pytest_cache

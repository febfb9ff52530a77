# closeloop — the Makefile is the interface. `make run` and `make test` are all you need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest

.PHONY: help venv run run-fresh test test-unit test-integration test-e2e test-reliability lint fmt schemas schemas-check bench bench-quick up down clean

help:
	@echo "make run          start the whole platform on the embedded PostgreSQL + Kafka-compatible broker, run the demo"
	@echo "make run-fresh    same, after wiping the local data in .closeloop/"
	@echo "make test         unit, integration (real PostgreSQL + Kafka protocol), end-to-end and bounded reliability tests"
	@echo "make test-reliability  the full reliability suite (kills, broker loss, database outage, load, poison messages, duplicates, hostile HTTP, access, state machines), with its summary"
	@echo "make schemas      regenerate schemas/ (JSON Schema per event, AsyncAPI, OpenAPI)"
	@echo "make lint | fmt   ruff + mypy | ruff format"
	@echo "make bench        the issue-6 benchmark suite against a raw baseline of the same run (<= 10 min)"
	@echo "make bench-quick  the same with smaller sizes (<= 2 min)"
	@echo "make up | down    docker compose (Apache Kafka + PostgreSQL + services), where Docker exists"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m libs.devstack up

run-fresh: $(STAMP)
	$(BIN)/python -m libs.devstack up --fresh

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy libs services
	$(PYTEST) -q -p no:cacheprovider tests/unit tests/integration tests/e2e tests/reliability

test-unit: $(STAMP)
	$(PYTEST) -q tests/unit

test-integration: $(STAMP)
	$(PYTEST) -q tests/integration

test-e2e: $(STAMP)
	$(PYTEST) -q tests/e2e

# Everything in tests/reliability at full size (CLOSELOOP_RELIABILITY=full: >= 10,000 commands under kills,
# several kills per process, a broker restart, a database outage, 60 s of load); `make test` runs the bounded form.
test-reliability: $(STAMP)
	CLOSELOOP_RELIABILITY=full $(PYTEST) -q -p no:cacheprovider tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy libs services

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(BIN)/python -m libs.schemas

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	BENCH_QUICK=1 $(BIN)/python -m bench

up:
	docker compose up --build -d

down:
	docker compose down

clean:
	rm -rf .closeloop .pytest_cache .ruff_cache .mypy_cache

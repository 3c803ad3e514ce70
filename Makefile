# Every target sets up .venv itself: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system demo test lint bench ui clean image check-image

$(STAMP): pyproject.toml constraints.txt scripts/install-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	scripts/install-packages $(BIN)/python  # uv where it can, else pip; bytecode on all cores
	touch $(STAMP)

setup: $(STAMP)

# Debian packages for the integration tests (Chromium, PostgreSQL, docker-compose).
system:
	scripts/system-deps

demo: setup
	$(BIN)/plexa run pipelines/digits-cnn.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/import-cycles

# two workers, each taking whole files: a file's module fixtures (a server, a Ray cluster, a
# shared run) start once. Not loadgroup: with pytest 9.2 its groups are silently dropped
# (pytest-xdist#1386), and every test is scheduled on its own
# (lint runs beside the tests, its output printed after theirs; either failing fails the target)
test: setup system
	@log=$$(mktemp); $(MAKE) --no-print-directory lint >$$log 2>&1 & linting=$$!; \
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25; tests=$$?; \
	wait $$linting; linted=$$?; cat $$log; rm -f $$log; \
	test $$tests -eq 0 && test $$linted -eq 0

# deploy/docker/Dockerfile as plexa:cpu: docker where a daemon answers, else buildah (on a base
# made from Debian's packages where python:3.11-slim-bookworm cannot be pulled); see deploy/README.md
image:
	scripts/build-image

# builds the image, then runs plexa in containers from it and tests/test_image.py (.ci/run runs it)
check-image: setup
	scripts/check-image

bench: setup
	$(BIN)/python benchmarks/overhead.py

ui: setup
	$(BIN)/plexa ui

# the documentation site (mkdocs.yml, docs/) into site/; `make test` builds it too (tests/test_docs.py)
.PHONY: docs
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) mlflow.db mlruns plexa-runs .pytest_cache .ruff_cache site

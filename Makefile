# The two commands: `make run` (whole stack, embedded defaults) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test flower venv clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "==> first run (or requirements changed): setting up $(VENV) with $(PYTHON)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> installing the pinned packages of requirements-dev.txt (about a minute the first time)"
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	@echo "==> installing this project into $(VENV) (editable)"
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)
	@echo "==> $(VENV) is ready"

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/orchestrator run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

flower: $(STAMP)
	$(BIN)/orchestrator flower

clean:
	rm -rf $(VENV) var .pytest_cache

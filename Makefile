# pgtenant entry points: `make test` is the documented test command (CI runs it via .ci/run).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pgtenant-installed

.PHONY: venv test demo run

venv: $(STAMP)

# Re-install only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

test: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/pytest -q

demo: venv
	$(VENV)/bin/pgtenant demo

run: venv
	$(VENV)/bin/pgtenant run --config config/pgtenant.example.toml

# pgtenant entry points: `make test` is the documented test command (CI runs it via .ci/run).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pgtenant-installed
# The compiled hot path (setup.py): each module with a .pxd, rebuilt whenever its .py or .pxd changes.
ACCEL_SRC := $(wildcard proxy/*.pxd proxy/*/*.pxd)
ACCEL_SRC += $(ACCEL_SRC:.pxd=.py)
ACCEL := proxy/_accel_manifest.json

.PHONY: venv test demo run

venv: $(STAMP) $(ACCEL)

# Re-install only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# pip's install above builds it too; this only rebuilds what changed since (a module that fails to compile
# stays pure Python, and proxy/_accel.py never runs a build older than its source).
$(ACCEL): $(STAMP) $(ACCEL_SRC) setup.py
	$(VENV)/bin/python setup.py --quiet build_ext --inplace
	@touch $(ACCEL)

test: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/pytest -q && PGTENANT_PURE=1 $(VENV)/bin/pytest -q tests/unit

demo: venv
	$(VENV)/bin/pgtenant demo

run: venv
	$(VENV)/bin/pgtenant run --config config/pgtenant.example.toml

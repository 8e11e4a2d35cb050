# pgtenant entry points: `make test` is the documented test command (CI runs it via .ci/run).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pgtenant-installed
# The compiled speed-ups (setup.py): proxy/_speedups.pyx, rebuilt whenever it or a module it hooks into changes.
ACCEL_SRC := proxy/_speedups.pyx $(shell grep -rlx 'from proxy._accel import speedups' proxy --include='*.py')
ACCEL := $(VENV)/.pgtenant-speedups

.PHONY: venv test test-txn demo run

venv: $(STAMP) $(ACCEL)

# Re-install only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# pip's install above builds it too; this rebuilds it when a source changed since (a failed build leaves pure
# Python, and proxy/_accel.py never runs a build older than its sources).
$(ACCEL): $(STAMP) $(ACCEL_SRC) setup.py
	$(VENV)/bin/python setup.py --quiet build_ext --inplace
	@touch $(ACCEL)

test: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/pytest -q && PGTENANT_PURE=1 $(VENV)/bin/pytest -q tests/unit

# The integration suite again with every proxy pooled in transaction mode, 2 servers per pool (issue 16;
# tests/support/proxyproc.py reads these variables; a test's own [pool] keys win).
test-txn: venv
	PGTENANT_TEST_POOL_MODE=transaction PGTENANT_TEST_POOL_SIZE=2 $(VENV)/bin/pytest -q tests/integration

demo: venv
	$(VENV)/bin/pgtenant demo

run: venv
	$(VENV)/bin/pgtenant run --config config/pgtenant.example.toml

# Every target creates .venv and installs exactly the locked set (uv.lock) into it; nothing
# relies on a hand install. A fresh machine needs only Python 3.11+ and make: pip installs uv
# (one pinned, hashed version), uv installs the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# uv never downloads an interpreter: it uses the one that made .venv.
export UV_PYTHON_DOWNLOADS := never
# uv, unlike pip, leaves compiling to bytecode to the first import, and where
# PYTHONDONTWRITEBYTECODE is set (CI images often set it) that first import is every import:
# each process the tests and the demo start would compile scipy and matplotlib again (6.3 s to
# import the serving and report stack, 2.5 s compiled). Compiled once here, about 20 s.
export UV_COMPILE_BYTECODE := 1

.PHONY: demo test test-numeric protos lint lock bench bench-all screenshots clean

# `uv sync --locked` stops, rather than install something else, when uv.lock no longer matches
# pyproject.toml (run `make lock`); it also removes what the lock does not list.
$(STAMP): pyproject.toml uv.lock .ci/bootstrap-requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q --disable-pip-version-check --no-deps \
		--require-hashes -r .ci/bootstrap-requirements.txt
	$(UV) sync --quiet --locked --extra dev --python $(PY)
	touch $(STAMP)

# The story of one experiment, then the cycle (drift -> retrain -> round 2), each ending 0.
demo: $(STAMP)
	$(VENV)/bin/abgate demo
	$(VENV)/bin/abgate demo --cycle

# Two worker processes (pytest-xdist): the suite waits on the processes it starts and on
# PostgreSQL more than it computes (serially it kept 2 cores 37 % busy): 332 s -> 215 s here.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

# The float-sensitive tests (marker `numeric`) again, down other float code paths of this CPU:
# numpy's SIMD dispatch off, another OpenBLAS kernel set, 2 onnxruntime threads (the values are
# computed for this machine by tests/numeric.py). A test demanding bit-identical floats fails.
test-numeric: $(STAMP)
	mode="$$($(PY) -m tests.numeric env)" && env $$mode $(PY) -m pytest -q -m numeric

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. \
		$(shell find proto -name '*.proto' | sort)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

# Re-resolve pyproject.toml into uv.lock (keeping current pins where they still fit; add
# UPGRADE=1 to move everything to the newest releases), and the two small hashed locks beside it.
lock: $(STAMP)
	$(UV) lock $(if $(UPGRADE),--upgrade)
	$(PY) -m tests.locks write

# The dashboard's pages in headless chromium (Debian's chromium and chromium-driver), as PNGs
# in docs/screenshots: the browser test run with its screenshots on.
screenshots: $(STAMP)
	ABGATE_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q -p no:cacheprovider \
		tests/evaluator/test_dashboard.py

# Issue #18's ratios (benchmarks/ratios.py: each figure against a limit measured beside it in
# the same run, MLServer in .venv-mlserver included; ~7 min) and the micro-benchmarks.
bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/micro.json
	$(PY) -m benchmarks.ratios --out benchmarks/results

# Everything in benchmarks/ (bench_decisions alone takes ~11 min on 2 cores).
bench-all: bench
	$(PY) -m benchmarks.e2e_compare --out benchmarks/results --nolog
	$(PY) -m benchmarks.bench_logwriter --out benchmarks/results/logwriter.json
	$(PY) -m benchmarks.bench_scaleout --out benchmarks/results/scaleout.json
	$(PY) -m benchmarks.bench_features --out benchmarks/results/features.json
	$(PY) -m benchmarks.bench_evaluator --out benchmarks/results/evaluator.json
	$(PY) -m benchmarks.bench_serving --out benchmarks/results
	$(PY) -m benchmarks.bench_durability --out benchmarks/results/durability.json
	$(PY) -m benchmarks.bench_decisions --runs 1000 --out benchmarks/results/decisions.json
	$(PY) -m benchmarks.fuzz --calls 50000 --out benchmarks/results/fuzz.json
	$(PY) -m benchmarks.bench_overload --out benchmarks/results/overload.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

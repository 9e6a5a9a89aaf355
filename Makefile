# Every target creates .venv and installs the project into it; nothing relies on a hand install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test protos lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/abgate demo

test: $(STAMP)
	$(PY) -m pytest -q

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. \
		$(shell find proto -name '*.proto' | sort)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/micro.json
	$(PY) -m benchmarks.e2e_compare --out benchmarks/results --nolog
	$(PY) -m benchmarks.bench_logwriter --out benchmarks/results/logwriter.json
	$(PY) -m benchmarks.bench_evaluator --out benchmarks/results/evaluator.json
	$(PY) -m benchmarks.bench_serving --out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

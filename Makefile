# The two commands a newcomer needs: `make run` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rillet-installed

.PHONY: setup run test lint typecheck unit proto proto-check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Start a local broker on 127.0.0.1 (data under ./.rillet-data) and print how to reach it.
run: setup
	MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \
		$(BIN)/python -m rillet.devcluster --data-dir .rillet-data

# Lint, type-check, then the whole default suite (slow seed sweeps: `make slow`).
test: setup lint typecheck
	$(BIN)/python -m pytest -m "not slow" -q

slow: setup
	$(BIN)/python -m pytest -m slow -q

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/python tools/typecheck.py

# Regenerate the gRPC stubs from proto/ (committed; tests/unit/test_proto_fresh.py checks them).
proto: setup
	$(BIN)/python tools/genproto.py

# Print benchmark figures (tests never assert on time). end_to_end starts and stops its own node.
bench: setup
	$(BIN)/python bench/end_to_end.py
	$(BIN)/python bench/client_hotpath.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/raft_core.py
	$(BIN)/python bench/raft_driver.py replication --seconds 5
	$(BIN)/python bench/raft_driver.py idle --seconds 5

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache

# The two commands a newcomer needs: `make run` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rillet-installed

.PHONY: setup run test lint typecheck unit proto proto-check bench bench-cluster bench-failover bench-idle chaos chaos-sweep slow clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Start a local 3-node cluster (127.0.0.1, .2, .3 on port 9091; data and logs under
# ./.rillet-data) and print how to reach it; Ctrl-C stops every node. `make run NODES=1`: one node.
NODES ?= 3
run: setup
	$(BIN)/python -m rillet.devcluster --data-dir .rillet-data --nodes $(NODES)

# Lint, type-check, then the whole default suite (slow seed sweeps: `make slow`).
test: setup lint typecheck
	$(BIN)/python -m pytest -m "not slow" -q

slow: setup
	$(BIN)/python -m pytest -m slow -q

# The fault-injection runs on real 3-node clusters alone (they are also part of `make test`).
chaos: setup
	$(BIN)/python -m pytest -m chaos -q

# The long fault-injection sweep: 100 random schedules (RILLET_CHAOS_SEEDS=N for another count).
chaos-sweep: setup
	RILLET_CHAOS_SEEDS=$${RILLET_CHAOS_SEEDS:-100} $(BIN)/python -m pytest -m "chaos and slow" -q tests/chaos

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

# The cluster figures of issue 4 (each script starts and stops its own 3 nodes on 127.0.0.1-3).
bench-cluster: setup
	$(BIN)/python bench/end_to_end.py --nodes 3 --latency-rate 125000
	$(BIN)/python bench/failover.py --kills 10
	$(BIN)/python bench/idle_cluster.py --partitions 1000

bench-failover: setup
	$(BIN)/python bench/failover.py --kills 10

bench-idle: setup
	$(BIN)/python bench/idle_cluster.py --partitions 1000

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache

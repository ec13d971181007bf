# Everything a developer or CI runs. `make run` and `make test` set up a fresh machine themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HANDOVER := $(VENV)/bin/scheduler-logger-handover
CONFIG ?= config.example.yaml
BUF_DIR := tools/buf
BUF := $(BUF_DIR)/node_modules/.bin/buf

.PHONY: install system proto check-proto docs fmt lint proto-lint buf go-example test unit integration run images bench bench-quick fuzz clean

# Bytecode is compiled here, once: a daemon started where bytecode is not written
# (PYTHONDONTWRITEBYTECODE, a read-only install) would otherwise compile every module at each start.
install: system $(STAMP) $(HANDOVER)
	@$(PY) -m compileall -q src

# The log program's compiled fast path (standard library only, GOPATH mode: no module download).
$(HANDOVER): src/scheduler/runtime/logger/handover.go $(STAMP)
	@GO111MODULE=off go build -trimpath -ldflags=-s -o $@ $<

system:
	@bash scripts/install-system.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

check-proto: $(STAMP)
	@rm -rf .proto-check && mkdir -p .proto-check
	@$(PY) scripts/gen_proto.py .proto-check
	@diff -r -x __pycache__ .proto-check/scheduler/api/_gen src/scheduler/api/_gen && \
	 diff -r -x __pycache__ .proto-check/scheduler/runtime/containerd/_gen src/scheduler/runtime/containerd/_gen && \
	 diff -r -x __pycache__ .proto-check/scheduler/storage/etcd/_gen src/scheduler/storage/etcd/_gen && \
	 diff -r .proto-check/gen-go gen/go && \
	 rm -rf .proto-check && echo "generated stubs are up to date" || \
	 { rm -rf .proto-check; echo "generated stubs differ from proto/: run 'make proto'"; exit 1; }

# docs/api.md, the API reference, from the proto's comments (a unit test fails when it is stale).
docs: $(STAMP)
	$(PY) scripts/gen_docs.py

# The buf CLI, pinned in tools/buf/package-lock.json, installed there (nothing global).
buf: $(BUF)

$(BUF): $(BUF_DIR)/package.json $(BUF_DIR)/package-lock.json
	@npm ci --prefix $(BUF_DIR) --no-audit --no-fund --loglevel=error
	@touch $(BUF)

# The public API's style rules, and no breaking change against the released v1 (proto-released/).
proto-lint: $(BUF)
	$(BUF) lint
	$(BUF) breaking proto --against proto-released

# The Go example client, against the checked-in stubs in gen/go (GOPATH mode, Debian's Go packages).
go-example: system
	scripts/build_go_example.sh

fmt: $(STAMP)
	$(PY) -m ruff format src tests bench images scripts examples
	$(PY) -m ruff check --fix src tests bench images scripts examples

lint: $(STAMP) proto-lint
	$(PY) -m ruff check src tests bench images scripts examples
	$(PY) -m ruff format --check src tests bench images scripts examples
	$(PY) -m mypy src
	$(VENV)/bin/lint-imports

unit: install
	$(PY) -m pytest tests/unit -q

integration: install images
	$(PY) -m pytest tests/integration -q

# The whole suite, as CI runs it: static checks, then unit and integration tests.
test: install images lint check-proto
	$(PY) -m pytest -q -p no:cacheprovider

images: install
	$(PY) -m images.build

run: install images
	$(VENV)/bin/scheduler run --config $(CONFIG)

# The API fuzz suite at length (CI runs it with 150 examples per RPC).
fuzz: install images
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} $(PY) -m pytest tests/integration/security/test_fuzz.py -q -p no:cacheprovider -s

bench: install images
	$(PY) -m bench

# The same benchmarks at small sizes (20 instead of 200 environments, ...): minutes, not an hour.
bench-quick: install images
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .proto-check .pytest_cache .mypy_cache .ruff_cache $(BUF_DIR)/node_modules

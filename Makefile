# The two commands of the README, plus a few conveniences. Every target installs what it needs
# (virtualenv, Python packages; `f2p stack up` fetches the Maven artifacts) and is safe to re-run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency list changes.
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint format bench stack-up stack-down java-example clean

demo: $(INSTALLED)  ## The main job: stack up, tiny workers, publish, wait, summary.
	$(BIN)/f2p demo

test: $(INSTALLED) lint  ## Lint, then the whole test suite against the real embedded stack.
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(INSTALLED)
	$(BIN)/f2p bench

stack-up: $(INSTALLED)
	$(BIN)/f2p stack up

stack-down: $(INSTALLED)
	$(BIN)/f2p stack down

# The JVM publisher of docs/PUBLISHING.md against the embedded stack (after `f2p stack up` and
# `f2p topics apply`, with a worker running): `make java-example LANE=batch`. Maven works
# offline once its first run has fetched the dependencies.
JAVA_EXAMPLE := examples/java-publisher
LANE ?= interactive
java-example: $(INSTALLED)
	cd $(JAVA_EXAMPLE) && (mvn -o -q -B package >/dev/null 2>&1 || mvn -q -B package)
	$(BIN)/f2p stack status --json > $(JAVA_EXAMPLE)/target/stack.json
	cd $(JAVA_EXAMPLE) && java -cp 'target/classes:target/lib/*' \
		io.f2pstream.example.PublishAndWait --stack-status target/stack.json --lane $(LANE)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	-$(BIN)/f2p stack down
	rm -rf $(VENV) .stack .pytest_cache .ruff_cache

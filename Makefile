# The two commands of the README, plus a few conveniences. Every target installs what it needs
# (virtualenv, Python packages; `f2p stack up` fetches the Maven artifacts) and is safe to re-run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency list changes.
INSTALLED := $(VENV)/.installed

# Binaries the tests need besides Python packages, fetched once into .tools/ (see `tools`).
TOOLS      := .tools
KUSTOMIZE_VERSION := v5.7.1
KUSTOMIZE  := $(TOOLS)/bin/kustomize
PROMETHEUS := $(TOOLS)/prometheus/usr/bin/prometheus

.PHONY: demo test lint format bench stack-up stack-down java-example clean tools generate

demo: $(INSTALLED) tools  ## The main job: stack up, tiny workers, publish, wait, summary.
	$(BIN)/f2p demo

test: $(INSTALLED) tools lint  ## Lint, then the whole test suite against the real embedded stack.
	$(BIN)/pytest

# kustomize renders infra/k8s in the tests (the real one, not a look-alike: strategic-merge
# patches and generators behave as on a cluster); built once from the Go module proxy (~1 min).
# Prometheus and promtool (rule unit tests, the embedded monitoring) come from Debian's package,
# unpacked here: no system install.
tools: $(KUSTOMIZE) $(PROMETHEUS)

$(KUSTOMIZE):
	GOTOOLCHAIN=local GOBIN=$(abspath $(TOOLS)/bin) \
		go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(PROMETHEUS):
	mkdir -p $(TOOLS)/deb
	cd $(TOOLS)/deb && rm -f prometheus_*.deb && \
		{ apt-get download prometheus 2>/dev/null || \
		  { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/prometheus
	test -x $@ && touch $@

# Regenerate the committed files derived from code: Strimzi topics (infra/topics.toml), the
# PrometheusRule (infra/monitoring/rules.yml) and the Grafana dashboards. A test fails when
# they are stale.
generate: $(INSTALLED)
	$(BIN)/f2p topics render --format strimzi -o infra/k8s/overlays/dev/kafka-topics.yaml
	$(BIN)/f2p topics render --format strimzi --profile production \
		-o infra/k8s/overlays/production/kafka-topics.yaml
	$(BIN)/f2p monitoring render

lint: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

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
	rm -rf $(VENV) .stack .tools .pytest_cache .ruff_cache .mypy_cache

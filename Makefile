# The two front-door commands: `make demo` and `make test`. Both set up .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test data lint bench clean-venv

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Fashion-MNIST: present already, or installed from the Debian package when we can (root + apt),
# else downloaded by torchvision; where neither works, `migbench data` says the ways to get it.
data: $(STAMP)
	@$(PY) -m migbench.cli data --quiet || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  $(PY) -m migbench.cli data; }

demo: data
	$(PY) -m migbench.cli demo

test: data
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: data
	$(PY) -m pytest -q -m benchmark --benchmark-enable -p no:randomly tests/benchmarks

lint: $(STAMP)
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)

# The README's two commands: `make demo` and `make test`. Both install first, so a fresh
# machine needs nothing else. PYTHON may point at a virtual environment's interpreter.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --disable-pip-version-check -q -c constraints.txt
export HF_HUB_OFFLINE = 1

.PHONY: install demo test lint format bench

install:
	$(PIP_INSTALL) torch==2.14.1 torchvision==0.29.1
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	$(PYTHON) -m genunc_lightning.cli demo

test: install
	$(PYTHON) -m ruff check genunc_lightning tests benchmarks
	$(PYTHON) -m pytest -q -p no:cacheprovider

lint:
	$(PYTHON) -m ruff check genunc_lightning tests benchmarks
	$(PYTHON) -m ruff format --check genunc_lightning tests benchmarks

format:
	$(PYTHON) -m ruff format genunc_lightning tests benchmarks
	$(PYTHON) -m ruff check --fix genunc_lightning tests benchmarks

bench:
	$(PYTHON) benchmarks/fisher.py
	$(PYTHON) benchmarks/sampling.py
	$(PYTHON) benchmarks/metrics.py --sizes 10000

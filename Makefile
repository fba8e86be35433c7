# The README's two commands: `make demo` and `make test`. Both install first, so a fresh
# machine needs nothing else. PYTHON may point at a virtual environment's interpreter.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --disable-pip-version-check -q -c constraints.txt
export HF_HUB_OFFLINE = 1

.PHONY: install demo test test-fast lint format bench assets experiments replication

# One resolver run for torch and the package (each pip run costs seconds even when all is installed).
install:
	$(PIP_INSTALL) torch==2.14.1 torchvision==0.29.1 -e ".[dev]"

demo: install
	$(PYTHON) -m genunc_lightning.cli demo

# The digits model-quality sweep of docs/digits_experiment_rules.md (20 minutes on the slower 2-core machine):
# runs/experiments/, and the table and figure of docs/experiments.md.
experiments: install
	$(PYTHON) -m genunc_lightning.experiments.sweep --output runs/experiments --docs docs

# The replicated digits experiment of docs/replication_rules.md: 8 UNets trained (or reused from runs/replication),
# two pools each, every test computed; writes docs/replication_results.json and docs/replication.md.
replication: install
	$(PYTHON) -m genunc_lightning.experiments.replication --output runs/replication --docs docs

test: install
	$(PYTHON) -m ruff check genunc_lightning tests benchmarks
	$(PYTHON) -m pytest -q -p no:cacheprovider

# Everything but the tests marked slow (10 s or more each: the demo's claims, the notebook, kill -9 and resume,
# the console script in a new interpreter, the README walkthrough, compiles).
test-fast: install
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not slow"

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

# Re-create the checkpoints shipped in genunc_lightning/assets (not needed for demo or test).
GENUNC = $(PYTHON) -m genunc_lightning.cli
assets: install
	$(GENUNC) fit --config configs/digits/model.yaml --config configs/digits/fit.yaml --trainer.enable_progress_bar false
	$(GENUNC) fit --config configs/digits/classifier_scorer.yaml
	$(GENUNC) fit --config configs/digits/classifier_evaluator.yaml
	for i in 0 1 2 3 4; do $(GENUNC) fit --config configs/toy/model.yaml --config configs/toy/fit.yaml \
	  --seed_everything $$i --trainer.callbacks.filename member$$i; done
	$(PYTHON) -m genunc_lightning.experiments.assets

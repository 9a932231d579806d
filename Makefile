# Set-up and everyday commands. `make train` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install only when the packaging files change. `make train` installs what training needs; `make test`
# adds the dev tools (pytest, Hypothesis, ruff) and the Ray extra that the study's cluster tests use.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev train test test-fast fuzz mutate lint bench figures sweep sweep-ratio tensorboard clean

install: $(STAMP)
install-dev: $(DEV_STAMP)

# Where torch alone comes from; empty: wherever pip looks by default. See the README's Requirements, e.g.
# make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) --constraint constraints.txt torch)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,ray]'
	touch $@

train: install
	$(BIN)/binclf fit -c configs/default.yaml
	$(BIN)/binclf test -c configs/default.yaml

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two test files at a time: most tests wait on processes of their own (a sweep's workers, DDP ranks, a Ray
# cluster), so a second file runs in that time. A file stays in one process, so its fixtures are made once.
PYTEST := $(BIN)/pytest --numprocesses 2 --dist loadfile

test: lint
	$(PYTEST)

# While developing: the same lint and every test but those marked slow. `make test` (and CI) runs them all.
test-fast: lint
	$(PYTEST) -m "not slow"

# Hostile input: many more generated examples than `make test` tries, chosen afresh; every distinct failure
# is shown (tests/hostile.py).
fuzz: install-dev
	rm -f .fuzz-findings.jsonl
	BINCLF_FUZZ=.fuzz-findings.jsonl $(BIN)/pytest tests/test_hostile.py tests/study/test_sweep_hostile.py -p no:cacheprovider -q --no-header $(FUZZ_ARGS)
	$(BIN)/python tests/hostile.py .fuzz-findings.jsonl

# Plausible bugs put into a copy of the source one at a time, each against the tests that should catch it;
# prints each mutant killed or survived, and the score (tests/mutate.py).
mutate: install-dev
	$(BIN)/python tests/mutate.py $(MUTANTS)

# Speed and memory against the bare PyTorch loop, printed as tables; each script says what it measures.
bench: install-dev
	@for script in startup end_to_end loop_overhead scale workarounds stacked_study stack_profile ratio_levers gpu; do \
		echo "== benchmarks/$$script.py"; $(BIN)/python benchmarks/$$script.py || exit 1; done

# The README's figures and test summary: the default config, fitted and tested in a scratch log folder.
figures: install
	@scratch=$$(mktemp -d) && \
	$(BIN)/binclf fit -c configs/default.yaml --trainer.default_root_dir $$scratch --trainer.enable_progress_bar false && \
	$(BIN)/binclf test -c configs/default.yaml --trainer.default_root_dir $$scratch --trainer.enable_progress_bar false \
		| tee $$scratch/test.log && \
	mkdir -p docs/figures && cp $$scratch/lightning_logs/version_0/training_loss.png docs/figures/ && \
	for png in $$scratch/lightning_logs/version_0/test_*.png; do name=$$(basename $$png); \
		cp $$png docs/figures/$${name#test_}; done && \
	sed -n '/^Test summary/,/^  efficiency/p' $$scratch/test.log > docs/figures/test_summary.txt && \
	rm -rf $$scratch

# The article's "Model applicability" study; its figures and table go into the README's docs/sweep/.
sweep: install
	time $(BIN)/binclf-sweep -c configs/sweeps/applicability.yaml
	mkdir -p docs/sweep
	cd lightning_logs/sweeps/applicability && cp accuracy.png llr_efficiency.png data_grid.png results.md \
		$(CURDIR)/docs/sweep/

# The same study on configs/ratio.yaml (standardized inputs, temperature calibration); into docs/sweep/ratio/.
sweep-ratio: install
	time $(BIN)/binclf-sweep -c configs/sweeps/ratio.yaml
	mkdir -p docs/sweep/ratio
	cd lightning_logs/sweeps/ratio && cp accuracy.png llr_efficiency.png results.md $(CURDIR)/docs/sweep/ratio/

tensorboard: install
	$(BIN)/tensorboard --logdir lightning_logs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info

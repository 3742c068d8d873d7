# make run   : create .venv (first time), install the project, run the default pipeline (params/toy.yaml)
# make test  : create .venv if missing, run the test suite (TEST_WORKERS=2 processes, pytest-xdist)
# make lab   : JupyterLab on the notebooks
# make colab : regenerate the Colab notebooks in notebooks/colab/ (a test fails when they are stale)
# make report RUN=toy : outputs/<run>/report.md + report.html
# make bench : every benchmark in bench/ (make bench-NAME for one, ARGS=--quick for a smoke run);
#              tables and JSON lines also go to outputs/bench/NAME.txt (see docs/benchmarks.md)
# make gpu-check : the prepared GPU check (bench/gpu_check.sh: one GPU, no network, < 9 min) into
#              outputs/gpu_check/; needs no .venv (a GPU image's python3 with torch will do)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/toy.yaml
# test processes (pytest-xdist; a module's tests stay in one process, so its fixtures are built once);
# TEST_WORKERS=0 runs the suite in this process alone
TEST_WORKERS ?= 2
BENCHES := train_vs_trainer packing contrastive scaling eval_vs_lm_eval tokenizer plan_memory corpus_memory gpu_smoke
SHELL  := /bin/bash

.PHONY: run test lab check clean-venv colab report bench gpu-check

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m lib.pipeline run $(PARAMS) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

check: $(VENV)/.installed
	$(PY) -m lib.pipeline check $(PARAMS)

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)

colab: $(VENV)/.installed
	$(PY) -m lib.cli.colab

report: $(VENV)/.installed
	$(PY) -m lib.cli.report outputs/$(or $(RUN),toy)

bench: $(addprefix bench-,$(BENCHES))

bench-%: $(VENV)/.installed
	mkdir -p outputs/bench
	set -o pipefail; $(PY) bench/$*.py $(ARGS) | tee outputs/bench/$*.txt

gpu-check:
	bash bench/gpu_check.sh

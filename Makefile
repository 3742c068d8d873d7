# make run   : create .venv (first time), install the project, run the default pipeline (params/toy.yaml)
# make test  : create .venv if missing, run the test suite
# make lab   : JupyterLab on the notebooks
# make colab : regenerate the Colab notebooks in notebooks/colab/ (a test fails when they are stale)
# make report RUN=toy : outputs/<run>/report.md + report.html
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/toy.yaml

.PHONY: run test lab check clean-venv colab report

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m lib.pipeline run $(PARAMS) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

check: $(VENV)/.installed
	$(PY) -m lib.pipeline check $(PARAMS)

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)

colab: $(VENV)/.installed
	$(PY) -m lib.colab

report: $(VENV)/.installed
	$(PY) -m lib.report outputs/$(or $(RUN),toy)

# make run   : create .venv (first time), install the project, run the default pipeline (params/toy.yaml)
# make test  : create .venv if missing, run the test suite
# make lab   : JupyterLab on the notebooks
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/toy.yaml

.PHONY: run test lab check clean-venv

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

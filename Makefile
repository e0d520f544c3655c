# The two commands of the README. Both create .venv (Python 3.11) if missing and install the
# project with the exact versions in constraints.txt; nothing else needs to be running.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[broker,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pipelines.demo

test: $(VENV)/.installed
	$(PY) -m pytest

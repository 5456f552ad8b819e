# Two entry points do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test up bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tts-pipeline demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

up: $(STAMP)
	$(VENV)/bin/tts-pipeline up

bench: $(STAMP)
	$(PY) scripts/bench_synth.py

clean:
	rm -rf $(VENV) .tts-data demo-output

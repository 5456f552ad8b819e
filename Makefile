# Two entry points do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test up bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tts-pipeline demo

# The studio's browser tests drive Debian's chromium (Playwright's own browser download cannot
# work offline): installed with apt when missing, as root or through sudo.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	  echo "$(CHROMIUM) is missing: install Debian's chromium (apt-get install chromium)" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

browser: $(CHROMIUM)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -p no:cacheprovider

up: $(STAMP)
	$(VENV)/bin/tts-pipeline up

bench: $(STAMP)
	$(PY) scripts/bench_synth.py

clean:
	rm -rf $(VENV) .tts-data demo-output

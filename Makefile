# Two entry points for a fresh machine; both create/refresh the local virtual environment.
#   make demo   runs the main job offline on the CPU
#   make test   runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; GPU users install their CUDA build first and use `pip install -e .`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.cfd3d-installed
# The Khronos glTF validator (npm) checks exported GLBs in the tests when npm is present.
GLTF := tools/gltf-validator
GLTF_STAMP := $(GLTF)/node_modules/.cfd3d-installed
HAVE_NPM := $(shell command -v npm 2>/dev/null)

.PHONY: demo test lint format clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfd3d generate "a red cube" --seed 0 --out out/demo --overwrite

$(GLTF_STAMP): $(GLTF)/package-lock.json
	npm ci --prefix $(GLTF) --silent --no-audit --no-fund
	touch $(GLTF_STAMP)

ifdef HAVE_NPM
test: $(GLTF_STAMP)
test: export CFD3D_REQUIRE_GLTF_VALIDATOR := 1
endif
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)

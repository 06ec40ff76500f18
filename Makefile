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
# Debian's chromium runs the web app's browser test (tests/serve/test_browser.py); `make test`
# installs it with apt-get where that exists and chromium does not.
HAVE_APT := $(shell command -v apt-get 2>/dev/null)
HAVE_CHROMIUM := $(shell command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null)

.PHONY: demo test lint format clean-venv browser prior

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfd3d generate "a red cube" --seed 0 --out out/demo --overwrite

# Retrain the shipped embedded prior (about 2.2 hours on 2 CPU cores; interrupted runs resume):
# pairs of objects seen from the front first, then every view. Copy
# runs/embedded-prior/embedded_prior.safetensors and its .sha256 into src/cfd3d/assets/.
PRIOR_THREADS ?= 2
prior: $(STAMP)
	OMP_NUM_THREADS=$(PRIOR_THREADS) $(VENV)/bin/cfd3d train-prior \
	  --config configs/embedded-prior-front.json --seed 0 --threads $(PRIOR_THREADS) \
	  --work runs/embedded-prior-front --out runs/embedded-prior-front/embedded_prior.safetensors
	OMP_NUM_THREADS=$(PRIOR_THREADS) $(VENV)/bin/cfd3d train-prior \
	  --config configs/embedded-prior.json --seed 1 --threads $(PRIOR_THREADS) \
	  --work runs/embedded-prior --out runs/embedded-prior/embedded_prior.safetensors

$(GLTF_STAMP): $(GLTF)/package-lock.json
	npm ci --prefix $(GLTF) --silent --no-audit --no-fund
	touch $(GLTF_STAMP)

ifdef HAVE_NPM
test: $(GLTF_STAMP)
test: export CFD3D_REQUIRE_GLTF_VALIDATOR := 1
endif
ifdef HAVE_APT
ifndef HAVE_CHROMIUM
test: browser
endif
endif
# Where chromium is present or can be installed (root with apt-get), the browser test must
# run: CFD3D_REQUIRE_BROWSER turns its skip into a failure.
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo 1)
ifneq ($(HAVE_CHROMIUM)$(and $(HAVE_APT),$(IS_ROOT)),)
test: export CFD3D_REQUIRE_BROWSER := 1
endif
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

# As root (CI containers) or with password-less sudo; otherwise the browser test skips.
browser:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "note: installing chromium needs root (apt-get install chromium); the browser" \
	"test will be skipped"; exit 0; fi; \
	$$SUDO apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)

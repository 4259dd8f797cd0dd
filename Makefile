# s2policy: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Headless MuJoCo rendering: EGL with Mesa's software rasterizer on CPU (NVIDIA's EGL on a GPU).
GL_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri
DEMO_EPISODES ?= 200

TASKS := cube_pick place stack push

.PHONY: setup lock sysdeps demo demo-tasks demo-ladder test test-fast lint format bench gpu-prep docs clean

setup: sysdeps $(STAMP)

# Python environment: the versions of requirements.lock (`make lock` resolves them with pip,
# torch together with timm; no pins of our own in pyproject.toml).
# robomimic 0.3.0 builds egl_probe with cmake, which needs the policy minimum with cmake >= 4.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_POLICY_VERSION_MINIMUM=3.5 $(PY) -m pip install -q -c requirements.lock \
	    -e '.[dev,robomimic,viz,lerobot]'
	@touch $(STAMP)

# Refresh requirements.lock from pyproject.toml (newest releases; KEEP=1: pin the installed ones).
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONPATH=. $(PY) -m s2policy.lock $(if $(filter 1,$(KEEP)),--keep-installed)

# System libraries for headless rendering: installed when run as root, else the exact command.
sysdeps:
	@if command -v dpkg >/dev/null; then dpkg -s $(GL_PACKAGES) >/dev/null 2>&1; \
	 else ldconfig -p | grep -q libEGL.so.1; fi; \
	if [ $$? = 0 ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing headless rendering libraries: $(GL_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GL_PACKAGES); \
	else \
	    echo "MuJoCo needs EGL for headless rendering; run: sudo apt-get install -y $(GL_PACKAGES)" >&2; \
	    exit 1; \
	fi

# The small embedded default on CPU: demonstrations -> S² feature caches -> one MLP policy per
# encoder (blind floor, oracle ceiling, single-scale vit_micro 64 px, S² vit_micro (64, 128), both
# with the shipped in-domain MAE weights) ->
# seeded evaluation -> success table (normalized between floor and ceiling) + plot + videos.
demo: setup
	$(PY) collect_demos.py task=cube_pick n_episodes=$(DEMO_EPISODES)
	$(PY) train_policy.py -m experiment=demo encoder=blind,oracle,micro,micro_s2 train.overwrite=true
	$(PY) -m s2policy.evaluation.report runs=[multirun/cube_pick] out=multirun/cube_pick/report
	@echo "videos: multirun/cube_pick/*/eval/*.mp4"

# The same comparison on every task (configs/experiment/multitask.yaml): one table per task and
# a summary across tasks in multirun/report.
demo-tasks: setup
	for task in $(TASKS); do $(PY) collect_demos.py task=$$task n_episodes=$(DEMO_EPISODES) || exit 1; done
	$(PY) train_policy.py -m experiment=multitask train.overwrite=true
	$(PY) -m s2policy.evaluation.report out=multirun/report \
	    runs=[$$(echo $(addprefix multirun/,$(TASKS)) | tr ' ' ,)] tasks=[$$(echo $(TASKS) | tr ' ' ,)]

# Does S² replace a larger model? The backbone ladder on cube picking at demo size
# (configs/experiment/demo_ladder.yaml; the full sweep is experiment=ladder, README).
demo-ladder: setup
	$(PY) collect_demos.py task=cube_pick n_episodes=200 output=datasets/cube_pick_200.zarr
	$(PY) train_policy.py -m experiment=demo_ladder train.overwrite=true
	$(PY) -m s2policy.evaluation.report runs=[multirun/demo_ladder/cube_pick] \
	    out=multirun/demo_ladder/report

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# The docs site (mkdocs-material): http://127.0.0.1:8000; `make test` builds it with --strict.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/env_speed.py
	$(PY) benchmarks/expert_success.py --seeds 100
	$(PY) benchmarks/encoder_throughput.py
	$(PY) benchmarks/cache_pipeline.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/inference_latency.py

# What the lent GPU machine lacks for benchmarks/gpu_suite.py: .whl/ (Python 3.12 wheels) and .gl/
# (EGL debs), then the suite's smoke run on this machine (benchmarks/README.md has the GPU command).
gpu-prep: setup
	bash benchmarks/prepare_gpu.sh
	$(PY) benchmarks/gpu_suite.py --smoke --device cpu --out outputs/gpu_smoke

clean:
	rm -rf $(VENV) outputs multirun site .pytest_cache .ruff_cache

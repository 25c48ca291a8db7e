# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use: torch first, from the index you choose (so no dependency pulls
# another build), then maskmill and its dependencies.
#   CPU only (the default; this machine's build):   make demo
#   a CUDA build:  make demo TORCH=torch==2.8.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
# TORCH is one pip requirement; TORCH_INDEX, if set, is the only index torch is taken from.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.maskmill-installed

.PHONY: demo demo-audio demo-video demo-text test test-slow lint format install clean slurm espeak results docs cluster cluster-down

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory espeak
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maskmill run configs/quickstart_image.yaml

demo-audio: $(STAMP)
	$(BIN)/maskmill run configs/quickstart_audio.yaml

demo-video: $(STAMP)
	$(BIN)/maskmill run configs/quickstart_video.yaml

demo-text: $(STAMP)
	$(BIN)/maskmill run configs/quickstart_text.yaml

# The audio demo corpus is spoken by espeak-ng (Debian's package). As root it is installed here;
# otherwise the audio demo and its tests say how to get it.
espeak:
	@if command -v espeak-ng >/dev/null; then :; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
		echo "installing espeak-ng (the audio demo's voices)"; \
		apt-get install -y -qq espeak-ng >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng >/dev/null; }; \
	else echo "espeak-ng is missing: the audio demo needs it (sudo apt-get install espeak-ng)" >&2; fi

# The tests submit to a real one-node Slurm; as root, start it first (idempotent, seconds).
test: $(STAMP)
	@$(MAKE) --no-print-directory espeak
	@if [ "$$(id -u)" -eq 0 ]; then cluster/local_slurm.sh; \
	else echo "not root: the real-Slurm tests will be skipped" >&2; fi
	$(BIN)/python -m pytest

# Install (if missing) and start Debian's Slurm and munge on this machine: one node, for trying
# `maskmill submit --slurm` and for the tests.
slurm:
	cluster/local_slurm.sh

# Two nodes as Linux namespaces of this machine, with Slurm across them (root; docs/cluster.md).
cluster:
	cluster/local_cluster.sh up 2

cluster-down:
	cluster/local_cluster.sh down

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Every quickstart from scratch under results/, then docs/results.md and the README's table.
results: $(STAMP)
	$(BIN)/python -m benchmarks.quickstart_results

# docs/reference.md from the typed configs (a test fails when they disagree).
docs: $(STAMP)
	$(BIN)/maskmill config --reference > docs/reference.md

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs results .pytest_cache

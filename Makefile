# timebill_ros: `make demo` and `make test` set everything up from nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# DDS stays on loopback; each run gets its own domain id unless one is given.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell shuf -i 10-200 -n 1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TIMEBILL_HOME ?= $(CURDIR)/.timebill
ENV := source scripts/env.sh

.PHONY: help setup demo test bench bench-llamacpp eval eval-long eval-large eval-validation eval-quick eval-bags load soak faults first-goal timing results clean
help:
	@echo "make setup   - venv, pinned dependencies, colcon build (idempotent)"
	@echo "make demo    - start the node, send one goal with feedback, stop"
	@echo "make test    - the whole test suite"
	@echo "make bench   - benchmarks; JSON lands in results/bench/"
	@echo "make bench-llamacpp - build llama-cpp-python here (~5 min) and compare it on the same GGUF"
	@echo "make eval    - the paper's comparison from measured traces, checked against the node; results/eval/"
	@echo "make eval-long - the same on prompts asking for long answers (no QA); results/eval-long/"
	@echo "make eval-validation - the traces on validation prompts: the k that scores best; results/eval-validation/"
	@echo "make eval-large - make eval with twice the prompts (24 a task), to decide more levels; results/eval-large/"
	@echo "make eval-quick - a smoke run: 2 prompts a task, 6 alphas, a short calibration; results/eval-quick/"
	@echo "make eval-bags - the older comparison: every goal through bags and the node, int8 and the k sweep"
	@echo "make load    - 4 clients, 200 goals in 10 s against the node (SmolLM2); results/bench/load.json"
	@echo "make soak    - 1000 goals in a row, memory/threads/fds; results/bench/soak.json"
	@echo "make faults  - a client killed mid-goal, the node restarted under a client; results/bench/faults.json"
	@echo "make first-goal - a fresh node's first goal against its fifth, and a first start's time to serving"
	@echo "make timing  - time promises through the node under load, the noise floor, structured answers"
	@echo "make results - publish: copy results/ into docs/results and regenerate the README tables"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && bash scripts/demo.sh

test: setup
	@$(ENV) && python -m pytest test $(PYTEST_ARGS)

bench: setup
	@$(ENV) && bash scripts/bench.sh

# Bench-only: llama.cpp compiled from source. Its default native build dies with an illegal
# instruction on these CPUs, so AMX and native tuning are off; never part of make setup.
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
bench-llamacpp: setup
	@$(ENV) && (python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" \
		pip install --no-cache-dir llama-cpp-python==0.3.36 diskcache==5.6.3 -c constraints.txt) \
		&& cd bench && LLAMA_CPP_CMAKE="$(LLAMA_CPP_CMAKE)" python llamacpp_bench.py $(BENCH_ARGS)

# The comparison from measured traces, checked against the node (docs/evaluation.md).
eval: setup
	@$(ENV) && bash scripts/eval.sh

eval-quick: setup
	@$(ENV) && PER_TASK=2 AGREE_PER_TASK=1 AGREE_METHODS=timebill AGREE_REPLAN=0 CAL_ARGS="--points 6 --repeats 1" \
		ALPHAS=0,0.25,0.5,0.75,0.9,0.95 PREFILL_SAMPLES=1 \
		OUT=results/eval-quick bash scripts/eval.sh

# The same with prompts that ask for long answers (decode a larger share of a goal; no QA): results/eval-long/.
eval-long: setup
	@$(ENV) && ANSWERS=long TASKS=code,list,summary OUT=results/eval-long bash scripts/eval.sh

# The main comparison with twice the prompts (24 a task: make eval's 12 and 12 more) and one node
# replay, where 48 goals a level decide no difference at two paired standard errors; ~62 min
# with the calibration stored (50.7 measured before the re-plan's runs and node check, ~12 more;
# over 60 from a fresh clone: not make eval's budget). results/eval-large/.
eval-large: setup
	@$(ENV) && PER_TASK=24 AGREE_REPEATS=1 OUT=results/eval-large bash scripts/eval.sh

# The traces on the validation split's prompts, no node check: best_k in its JSON is the k
# make eval (and eval-long, eval-quick) then plans the test prompts with; results/eval-validation/.
eval-validation: setup
	@$(ENV) && SPLIT=validation OUT=results/eval-validation bash scripts/eval.sh

# The older path: every goal of every method through the node, the int8 model and the k sweep.
eval-bags: setup
	@$(ENV) && bash scripts/eval_bags.sh

# The node under stress runs the real default model (SmolLM2) unless TIMEBILL_BENCH_MODEL
# names another (builtin:toy runs them in seconds).
load: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:smollm2} python load.py $(BENCH_ARGS)

soak: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:smollm2} python soak.py $(BENCH_ARGS)

faults: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:smollm2} python faults.py $(BENCH_ARGS)

first-goal: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:smollm2} python first_goal.py $(BENCH_ARGS) \
		&& python first_start.py $(BENCH_ARGS)

# Time promises through the node under changing load, this host's noise floor and the bound
# replayed on it (~35 min).
timing: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:smollm2} python timing_under_load.py \
		$(BENCH_ARGS) && python noise_floor.py $(BENCH_ARGS) && python tracker_replay.py \
		&& python structured_bench.py $(BENCH_ARGS)

results: setup
	@$(ENV) && timebill publish

clean:
	rm -rf build install log .timebill results

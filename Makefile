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

.PHONY: help setup demo test bench eval load soak results clean
help:
	@echo "make setup   - venv, pinned dependencies, colcon build (idempotent)"
	@echo "make demo    - start the node, send one goal with feedback, stop"
	@echo "make test    - the whole test suite"
	@echo "make bench   - benchmarks; JSON lands in results/bench/"
	@echo "make eval    - the paper's comparison through bags and the node; results/eval/"
	@echo "make load    - 4 clients, 200 goals in 10 s against the node; results/bench/load.json"
	@echo "make soak    - 1000 goals in a row, memory/threads/fds; results/bench/soak.json"
	@echo "make results - publish: copy results/ into docs/results and regenerate the README tables"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && bash scripts/demo.sh

test: setup
	@$(ENV) && python -m pytest test $(PYTEST_ARGS)

bench: setup
	@$(ENV) && bash scripts/bench.sh

eval: setup
	@$(ENV) && bash scripts/eval.sh

# load and soak run the shipped default model unless TIMEBILL_BENCH_MODEL names another
# (bench/common.py alone falls back to the random plumbing model).
load: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:default} python load.py $(BENCH_ARGS)

soak: setup
	@$(ENV) && cd bench && TIMEBILL_BENCH_MODEL=$${TIMEBILL_BENCH_MODEL:-builtin:default} python soak.py $(BENCH_ARGS)

results: setup
	@$(ENV) && timebill publish

clean:
	rm -rf build install log .timebill results

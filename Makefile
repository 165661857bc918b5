# make demo   set up (if needed), then run the demo
# make test   set up (if needed), then run the tests
# make setup  only the set-up: .venv/, ROS interfaces, pip install -e ., and .venv-vllm/ (the LLM server
#             of the serving tests, scripts/setup_vllm.sh; VLM3R_VLLM_SETUP=0 skips it); idempotent
SHELL := /bin/bash
PYTHON := .venv/bin/python
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-m "not slow"'
PYTEST_ARGS ?=

.PHONY: setup test demo clean

setup:
	bash scripts/setup.sh
	bash scripts/setup_vllm.sh

test: setup
	$(PYTHON) -m pytest -q -ra test/ $(PYTEST_ARGS)

demo: setup
	$(PYTHON) -m vlm3r_ros.tools.demo

# Removes the set-up outputs only (all git-ignored); the next make runs a fresh set-up.
clean:
	rm -rf .venv .venv-vllm build vlm3r_ros.egg-info vlm3r_ros/msg vlm3r_ros/srv vlm3r_ros/action
	rm -f vlm3r_ros/*.so

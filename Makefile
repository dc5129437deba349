# Two-command setup:  `make demo` (install + main job on built-in data), `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test runtime-check clean

$(STAMP): pyproject.toml runtime/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ./runtime
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/solov2 demo --out runs/demo

# The OpenVINO tests in a process of their own (tests/conftest.py says why).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -m "not openvino"
	$(BIN)/python -m pytest -q -m openvino

# The PyTorch-free runtime installed alone, as docs/deploy.md says: no torch in its venv, and it
# predicts with a model that solov2 exports.
RUNTIME_VENV := .venv-runtime
runtime-check: $(STAMP)
	rm -rf $(RUNTIME_VENV) runs/runtime-check
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q ./runtime
	$(RUNTIME_VENV)/bin/python -c "import importlib.util, sys; sys.exit('torch is installed in the runtime venv' if importlib.util.find_spec('torch') else 0)"
	$(BIN)/solov2 export --config light_448_r18 --out runs/runtime-check/model.onnx --no-check
	$(RUNTIME_VENV)/bin/solov2-runtime predict runs/runtime-check/model.onnx tests/data/photos --out runs/runtime-check/predict --quiet
	test -s runs/runtime-check/predict/results.json
	du -sh $(RUNTIME_VENV)

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) runs

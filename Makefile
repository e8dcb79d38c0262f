# One-command set-up: `make test` and `make demo` create .venv (Python 3.11) and install everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the machine keeps local wheels (the CPU build of torch), use them instead of a multi-GB download.
PIP_LOCAL := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup test test-blender lint demo bench addon clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_LOCAL) -e ".[test,blender]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q tests blender_tests
	$(MAKE) --no-print-directory test-blender

# The add-on supports Blender 4.2 LTS to 5.0: the Blender tests also run under these releases, each in its own
# venv (.venv-bpyVERSION). One of them: make test-blender OTHER_BLENDERS=5.0.1
OTHER_BLENDERS ?= 4.2.23 5.0.1

.venv-bpy%/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-bpy$*
	.venv-bpy$*/bin/python -m pip install --quiet --upgrade pip
	.venv-bpy$*/bin/python -m pip install --quiet $(PIP_LOCAL) -e ".[test]" "bpy==$*"
	touch $@

test-blender: $(foreach v,$(OTHER_BLENDERS),.venv-bpy$(v)/.installed)
	for v in $(OTHER_BLENDERS); do echo "Blender $$v:"; .venv-bpy$$v/bin/python -m pytest -q blender_tests || exit 1; done

SAMPLE := samples/sample_photo

demo: setup
	$(BIN)/invrender scene $(SAMPLE).png --camera $(SAMPLE)_camera.json -o demo_out/scene.blend \
		--maps-dir demo_out/maps --relight-sun 30 110 --render demo_out/relit.png --samples 32

bench: setup
	$(BIN)/python bench/bench_fusion.py
	$(BIN)/python bench/bench_decompose.py
	$(BIN)/python bench/bench_scene.py
	$(BIN)/python bench/bench_relight.py
	$(BIN)/python bench/bench_face_fit.py --quick
	$(BIN)/python bench/bench_face.py

# make addon: one zip with the wheels of all three platforms; make addon PLATFORM=linux-x64: that platform only.
addon: setup
	$(BIN)/python build_addon.py --output-dir dist $(foreach p,$(PLATFORM),--platform $(p))

clean:
	rm -rf $(VENV) .venv-bpy* demo_out dist

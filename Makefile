# marforge: trained PyTorch models -> versioned TorchServe archives -> a served, measured model.
# `make` (or `make help`) lists the targets. Every VAR below can be overridden: make serve RUN_DIR=/tmp/x
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
VENV ?= .venv
MODEL_STORE ?= model_store
RUN_DIR ?= .run
FORMAT ?=
MODEL ?= fashion
VERSION ?=
RETIRE ?=
SOAK_MINUTES ?= 5
SOAK_ARGS ?=
BENCH_MODEL ?=
BENCH_VERSION ?=
BENCH_ARGS ?=
BENCH_IMAGES ?=
IMAGE ?=
PROTOCOL ?=
STORAGE_URI ?=
KSERVE_ARGS ?=
KSERVE_BENCH_ARGS ?=
OUT ?=
NAME ?=
CHECKPOINT ?=
EXPORTED ?=
HANDLER_FILE ?=
EXTRA_FILES ?=
REQUIREMENTS ?=
PRESET ?=
SAMPLES ?=
IMPORT_ARGS ?=
AGAINST ?=
PYTEST_ARGS ?=
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

PY := $(VENV)/bin/python
comma := ,
SETUP_STAMP := $(VENV)/.marforge-setup
MARFORGE := $(PYTHON) -m marforge --registry models.toml
# The archive lists come from models.toml (read with the standard library only: no venv needed).
ARCHIVES = $(shell $(MARFORGE) archives --model-store $(MODEL_STORE) $(if $(FORMAT),--formats $(FORMAT)))
# The two real NIH chest X-rays the CheXNet demo is measured with (read from ../shared, never copied here).
CHEST_XRAYS ?= ../shared/data/chest-xray
# bench-first's versions (model:version): a version with a previous one gets the rollout rows too.
BENCH_FIRST ?= fashion:2.0 chexnet:0.1
BENCH_ARCHIVES = $(shell $(MARFORGE) archives --model-store $(MODEL_STORE) --bench)
# Every archive format, from handlers/contract.py's FORMATS (one rule each, below).
FORMATS := $(shell $(MARFORGE) formats)
# What an archive is built from. The code that builds it (BUILD_CODE in marforge/archiving/inputs.py, which
# bench's staleness check reads too) and its weights' metadata are file prerequisites; the version's own
# registry entry, and the hashes of its weights (or exported file), model definition, own handler's files,
# samples and eval images are in its stamp
# $(MODEL_STORE)/.inputs/<key>.json, rewritten only when they change (marforge/archiving/inputs.py): so a
# change to a rollout threshold, a serving setting or another version rebuilds nothing.
ARCHIVE_INPUTS := $(shell $(MARFORGE) build-code)
VERSION_FLAG = $(if $(VERSION),--version $(VERSION))

.PHONY: help
## help: list the targets (the default goal)
help:
	@echo "marforge targets (override settings as VAR=value):"
	@awk '/^## /{sub(/^## /,""); n=index($$0,": "); printf "  %-17s %s\n", substr($$0,1,n-1), substr($$0,n+2)}' $(MAKEFILE_LIST)

.PHONY: setup
## setup: create .venv (Python 3.11) with the pinned packages; checks for Java 11+
setup: $(SETUP_STAMP)

$(SETUP_STAMP): requirements.txt requirements-serve.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run: make setup PYTHON=/path/to/python3.11" >&2; exit 1; }
	@command -v java >/dev/null || { echo "error: Java 11+ is needed by TorchServe; install it: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
	@v=$$(java -version 2>&1 | awk -F'"' '/version/{split($$2,p,"."); print (p[1]=="1" ? p[2] : p[1])}'); \
	  [ "$${v:-0}" -ge 11 ] || { echo "error: Java $$v found, TorchServe needs 11+: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m marforge stubs
	touch $@

.PHONY: weights
## weights: retrain every version from scratch (fixed seeds; needs dataset-fashion-mnist). Not run by serve/test
weights: $(SETUP_STAMP)
	@test -d $(FASHION_MNIST_DIR) || { echo "error: Fashion-MNIST not found in $(FASHION_MNIST_DIR): apt-get install -y dataset-fashion-mnist (or set FASHION_MNIST_DIR)" >&2; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-train.txt -c constraints.txt
	MARFORGE_FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(PY) -m marforge train --all
	MARFORGE_FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(PY) -m marforge samples

.PHONY: archive
## archive: build and verify model_store/<name>-<version>.mar for every version (make -j safe; FORMAT=<one of `python3 -m marforge formats`> builds <name>-<version>-<format>.mar)
archive: $(ARCHIVES)

$(MODEL_STORE)/%.mar: weights/%.json $(MODEL_STORE)/.inputs/%.json $(ARCHIVE_INPUTS) | $(SETUP_STAMP)
	$(PY) -m marforge archive --key $* --model-store $(MODEL_STORE)

# One rule per optional format; make prefers these (the shorter stem) for <key>-<format>.mar.
define VARIANT_RULE
$(MODEL_STORE)/%-$(1).mar: weights/%.json $(MODEL_STORE)/.inputs/%.json $(ARCHIVE_INPUTS) | $(SETUP_STAMP)
	$(PY) -m marforge archive --key $$* --format $(1) --model-store $(MODEL_STORE)
endef
$(foreach format,$(FORMATS),$(eval $(call VARIANT_RULE,$(format))))

# The CheXNet demo's synthetic weights: a seeded DenseNet121 saved in CheXNet's checkpoint format and
# imported like a real one (marforge/archiving/synthetic.py). Never committed; every version's metadata
# and `make status` say they are synthetic.
weights/chexnet-0.1.pt weights/chexnet-0.1.json &: model_defs/chexnet.py marforge/archiving/synthetic.py \
		marforge/archiving/importer.py marforge/archiving/checkpoints.py marforge/archiving/presets.py | $(SETUP_STAMP)
	$(PY) -m marforge demo

# Checked on every make run (after the weights are made: it hashes them), rewritten only when the version's inputs changed.
$(MODEL_STORE)/.inputs/%.json: weights/%.json FORCE
	@$(MARFORGE) stamp $* --model-store $(MODEL_STORE) >/dev/null
.PRECIOUS: $(MODEL_STORE)/.inputs/%.json
.PHONY: FORCE
FORCE:

.PHONY: import
## import: a model trained elsewhere as NAME VERSION: CHECKPOINT=model.pth.tar PRESET=chexnet, or EXPORTED=model.onnx|.pt2|.pt (TorchScript), with HANDLER_FILE=handlers/mine.py EXTRA_FILES=a,b REQUIREMENTS=req.txt for your own handler
import: | $(SETUP_STAMP)
	@test -n "$(NAME)" -a -n "$(VERSION)" -a -n "$(CHECKPOINT)$(EXPORTED)" || { echo "error: set NAME, VERSION and CHECKPOINT or EXPORTED, e.g. make import NAME=chexnet VERSION=1.0 CHECKPOINT=model.pth.tar PRESET=chexnet" >&2; exit 1; }
	$(PY) -m marforge import $(NAME) $(VERSION) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(EXPORTED),--exported $(EXPORTED)) $(if $(PRESET),--preset $(PRESET)) $(if $(SAMPLES),--samples $(SAMPLES)) $(if $(HANDLER_FILE),--handler-file $(HANDLER_FILE)) $(foreach f,$(subst $(comma), ,$(EXTRA_FILES)),--extra-file $(f)) $(if $(REQUIREMENTS),--requirements $(REQUIREMENTS)) $(IMPORT_ARGS)

.PHONY: expect
## expect: record what NAME VERSION (served by its own handler) answers to its samples, as the answers its archive must give: make expect NAME=debsections VERSION=1.0
expect: | $(SETUP_STAMP)
	@test -n "$(NAME)" -a -n "$(VERSION)" || { echo "error: set NAME and VERSION, e.g. make expect NAME=debsections VERSION=1.0" >&2; exit 1; }
	$(PY) -m marforge expect $(NAME) $(VERSION)

.PHONY: serve
## serve: build what is missing, start TorchServe, wait until every version is READY, warm each up with its samples, print URLs and a curl
serve: archive
	$(PY) -m marforge serve --model-store $(MODEL_STORE) --run-dir $(RUN_DIR)

.PHONY: stop
## stop: stop the server that `make serve` started (by its pid)
stop: | $(SETUP_STAMP)
	$(PY) -m marforge stop --run-dir $(RUN_DIR)

.PHONY: status
## status: every model and version: default, workers and their state, queue depth
status: | $(SETUP_STAMP)
	@$(PY) -m marforge status --run-dir $(RUN_DIR)

.PHONY: rollout
## rollout: move MODEL's traffic to VERSION: gate on the eval set, promote, watch, roll back on failure (RETIRE=1 unregisters the old one)
rollout: | $(SETUP_STAMP)
	@test -n "$(VERSION)" || { echo "error: set VERSION, e.g. make rollout MODEL=fashion VERSION=2.0" >&2; exit 1; }
	$(PY) -m marforge rollout $(MODEL) $(VERSION) $(if $(RETIRE),--retire) --model-store $(MODEL_STORE) --run-dir $(RUN_DIR)

.PHONY: rollback
## rollback: make MODEL's previously promoted version the default again (registers it again if retired)
rollback: | $(SETUP_STAMP)
	$(PY) -m marforge rollback $(MODEL) --model-store $(MODEL_STORE) --run-dir $(RUN_DIR)

.PHONY: soak
## soak: SOAK_MINUTES of steady load on the running server (make serve first): errors, p99 drift, memory that keeps rising (SOAK_ARGS=--record writes docs/operations.md)
soak: | $(SETUP_STAMP)
	$(PY) -m marforge soak $(MODEL) --minutes $(SOAK_MINUTES) --run-dir $(RUN_DIR) $(SOAK_ARGS)

.PHONY: kserve
## kserve: per version, a storage location, marforge's own ServingRuntime and the InferenceService YAML (KSERVE_ARGS=--runtime stock: KServe's TorchServe runtime): make kserve MODEL=fashion VERSION=2.0 STORAGE_URI=s3://bucket/marforge
kserve: archive
	@test -n "$(STORAGE_URI)" || { echo "error: set STORAGE_URI, where the bundles will be copied, e.g. make kserve STORAGE_URI=s3://bucket/marforge" >&2; exit 1; }
	$(PY) -m marforge kserve $(if $(filter command line,$(origin MODEL)),$(MODEL) $(VERSION)) --storage-uri $(STORAGE_URI) --model-store $(MODEL_STORE) $(KSERVE_ARGS)

.PHONY: bench-kserve
## bench-kserve: the own KServe runtime's pod against the stock runtime's (TorchServe's own v1/v2 routes; KSERVE_BENCH_ARGS="--wrapper DIR --wrapper-python PY": kserve_wrapper too), each from its bundle: first answer, req/s, p50/p99 per client count (python -m marforge bench-kserve --help) into docs/kserve-performance.md: make bench-kserve MODEL=fashion VERSION=2.0
bench-kserve: archive
	$(PY) -m marforge bench-kserve $(if $(filter command line,$(origin MODEL)),$(MODEL) $(VERSION)) --model-store $(MODEL_STORE) --verbose $(KSERVE_BENCH_ARGS)

.PHONY: bench
## bench: ceiling, stock TorchServe (and its own handler for the task: image_classifier, object_detector, image_segmenter), marforge (HTTP, gRPC, v2 JSON), Flask, every other format of BENCH_MODEL BENCH_VERSION, as its task allows, and the answer sizes (default: python -m marforge bench --help's); tables into docs/performance.md (BENCH_IMAGES=folder, BENCH_ARGS=--short)
bench: $(BENCH_ARCHIVES)
	@test -n "$(BENCH_MODEL)" -o -z "$(BENCH_VERSION)" || { echo "error: BENCH_VERSION=$(BENCH_VERSION) needs its model: make bench BENCH_MODEL=fashion BENCH_VERSION=$(BENCH_VERSION)" >&2; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt -c constraints.txt
	$(PY) -m marforge bench $(strip $(BENCH_MODEL) $(BENCH_VERSION)) --model-store $(MODEL_STORE) --verbose $(if $(BENCH_IMAGES),--images $(BENCH_IMAGES)) $(BENCH_ARGS)

.PHONY: bench-first
## bench-first: the first requests after READY and after a rollout, with the workers' warm-up on and off, for each BENCH_FIRST model:version (default fashion:2.0 chexnet:0.1), into docs/performance.md
bench-first: $(BENCH_ARCHIVES)
	@set -e; for mv in $(BENCH_FIRST); do $(PY) -m marforge bench $${mv%%:*} $${mv#*:} --first --model-store $(MODEL_STORE) --verbose; done

.PHONY: bench-lone
## bench-lone: one client: where its requests' time goes (outside the server, queued with the batch window, in the worker), as shipped, with no window and with batches of one, against Flask, for fashion 2.0 and the CheXNet demo (its real radiographs from ../shared when there), into docs/performance.md
bench-lone: $(BENCH_ARCHIVES)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt -c constraints.txt
	$(PY) -m marforge bench fashion 2.0 --lone --model-store $(MODEL_STORE) --verbose
	$(PY) -m marforge bench chexnet 0.1 --lone --model-store $(MODEL_STORE) --verbose $(if $(wildcard $(CHEST_XRAYS)),--images $(CHEST_XRAYS))

.PHONY: bench-against
## bench-against: BENCH_MODEL BENCH_VERSION as this checkout serves it against commit AGAINST (its own code, archive and settings), alternating rounds at 16 and 64 clients: a regression shows beyond the rounds' noise, into docs/performance.md: make bench-against AGAINST=HEAD~1 BENCH_MODEL=chexnet BENCH_VERSION=0.1
bench-against: archive
	@test -n "$(AGAINST)" || { echo "error: set AGAINST to the commit to compare with, e.g. make bench-against AGAINST=HEAD~1" >&2; exit 1; }
	$(PY) -m marforge bench $(strip $(BENCH_MODEL) $(BENCH_VERSION)) --against $(AGAINST) --concurrency 16,64 --model-store $(MODEL_STORE) --verbose

.PHONY: tune
## tune: measure MODEL's (VERSION's, MODEL=all: every version's) workers, threads, batch size and window on this machine and write them into models.toml as its `tuned` table, the measurement into docs/tuning.md: make tune MODEL=chexnet VERSION=0.1
tune: archive
	$(PY) -m marforge tune $(if $(filter all,$(MODEL)),--all,$(MODEL) $(VERSION)) --model-store $(MODEL_STORE) --verbose

.PHONY: bench-formats
## bench-formats: every version in every format at 16 and 64 clients: which format wins for each model
bench-formats: $(BENCH_ARCHIVES)
	$(PY) -m marforge bench --compare-formats --concurrency 16,64 --seconds 5 --model-store $(MODEL_STORE) --verbose $(BENCH_ARGS)

.PHONY: predict
## predict: send IMAGE to MODEL (VERSION optional; PROTOCOL=grpc or grpc-v2 for gRPC): make predict MODEL=fashion VERSION=2.0 IMAGE=x.png
predict: | $(SETUP_STAMP)
	@test -n "$(IMAGE)" || { echo "error: set IMAGE, e.g. make predict MODEL=fashion IMAGE=$$(ls samples/fashion/*.png | head -1)" >&2; exit 1; }
	@$(PY) -m marforge predict $(MODEL) $(IMAGE) $(VERSION_FLAG) $(if $(PROTOCOL),--protocol $(PROTOCOL)) --run-dir $(RUN_DIR)

.PHONY: explain
## explain: where MODEL looked in IMAGE (VERSION optional): heatmaps over the image, written to OUT (default <image>.explained.png)
explain: | $(SETUP_STAMP)
	@test -n "$(IMAGE)" || { echo "error: set IMAGE, e.g. make explain MODEL=fashion IMAGE=$$(ls samples/fashion/*.png | head -1)" >&2; exit 1; }
	@$(PY) -m marforge explain $(MODEL) $(IMAGE) $(VERSION_FLAG) $(if $(OUT),--out $(OUT)) --run-dir $(RUN_DIR)

.PHONY: token
## token: print the running server's inference key (use: curl -H "Authorization: Bearer $(make -s token)" ...)
token: | $(SETUP_STAMP)
	@$(PY) -m marforge token --run-dir $(RUN_DIR)

.PHONY: lint
## lint: ruff and mypy, as configured in pyproject.toml (part of make test)
lint: $(SETUP_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

.PHONY: test
## test: lint, then every test (handler, archive, and integration tests against a real TorchServe)
test: lint $(SETUP_STAMP) weights/chexnet-0.1.pt
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-integration
## test-integration: only the tests that start a real TorchServe
test-integration: $(SETUP_STAMP) weights/chexnet-0.1.pt
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

.PHONY: constraints
## constraints: re-resolve every requirements*.txt and pin the whole set (direct and transitive) in constraints.txt
constraints: $(SETUP_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed --report $(VENV)/resolved.json \
	  -r requirements.txt -r requirements-bench.txt -r requirements-train.txt
	{ sed -n '1,3p' constraints.txt; $(PY) -c 'import json, sys; r = json.load(open(sys.argv[1])); \
	  print(*sorted("%s==%s" % (i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in r["install"]), sep="\n")' \
	  $(VENV)/resolved.json; } > constraints.new && mv constraints.new constraints.txt

.PHONY: clean
## clean: remove built archives and server state (not the venv)
clean:
	rm -rf $(MODEL_STORE) $(RUN_DIR) .pytest_cache

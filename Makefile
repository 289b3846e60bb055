# ddbook: `make repro` (the default pipeline) and `make test` each do the whole set-up first.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.setup-done
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg
# tcmalloc cuts CPU step time 25-35% on the dev machine (cpu-costs.md); used when installed. Looked up by the
# shell when a recipe runs, so the first `make repro` on a fresh machine uses what `setup` just installed.
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
PRELOAD = LD_PRELOAD=$$(test -e $(TCMALLOC) && echo $(TCMALLOC))

.PHONY: setup repro launch test bench profile clean-smoke

setup: $(STAMP)

$(STAMP): requirements.txt requirements-lock.txt requirements-cluster.txt pyproject.toml
	@bash .ci/system-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-cluster.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: setup            ## the default pipeline (quick profile unless params.yaml says otherwise)
	@python -m ddlib.plan   # what will run and how long it took last time
	time $(PRELOAD) python -m ddlib.repro   # dvc repro, without the per-stage start-up (ddlib/repro.py)

JOBS ?= 2
launch: setup           ## the same pipeline, independent stages in JOBS parallel workers (ddlib/launch.py)
	time $(PRELOAD) python -m ddlib.launch --jobs $(JOBS)

test: setup             ## unit tests, papermill+nbval over every notebook, one tiny dvc repro
	TQDM_DISABLE=1 $(PRELOAD) python -m pytest -q tests notebooks --nbval-lax

bench: setup            ## time one iteration / one evaluation of each method, peak memory
	$(PRELOAD) python bench/bench_methods.py

profile:                ## make profile PROFILE=paper|quick|tiny  (DVC tracks the change)
	sed -i 's/^profile: [a-z]*/profile: $(PROFILE)/' params.yaml && grep '^profile:' params.yaml

clean-smoke:
	rm -rf .smoke

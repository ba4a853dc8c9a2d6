# bilevel-diffusion: every target creates .venv and installs the pinned requirements if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODE   ?= quick
JOBS   ?= 2

.PHONY: help install test test-all demo demo-train smoke bench reproduce aggregate pretrain clean-outputs

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned requirements and the package

test: $(STAMP)  ## fast test suite: 2 workers of one thread each (under 10 minutes on 2 CPU cores)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow and not gpu" -q -n 2 --dist loadfile --durations=15

test-all: $(STAMP)  ## every CPU test, slow ones included
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not gpu" -q -n 2 --dist loadfile

demo: $(STAMP)  ## the bilevel lambda loop beside a 3-point grid on the embedded MNIST model (minutes on a CPU)
	OMP_NUM_THREADS=$(or $(THREADS),1) $(PY) scripts/demo.py

demo-train: $(STAMP)  ## train an MNIST diffusion model on CPU (about 10 minutes on 2 cores) and report FID / IS
	$(PY) run.py task=train_mnist experiment=demo_train hydra.run.dir=outputs/demo/$$(date +%Y-%m-%d_%H-%M-%S)

smoke: $(STAMP)  ## the CI-sized run of task=train_mnist
	$(PY) run.py task=train_mnist experiment=smoke hydra.run.dir=outputs/smoke/$$(date +%Y-%m-%d_%H-%M-%S)

bench: $(STAMP)  ## speed targets (sampling, training, estimator cost; bilevel vs search from reproduce runs) -> results/bench/
	$(PY) scripts/bench.py --out results/bench

reproduce: $(STAMP)  ## the paper's tables and figures: MODE=smoke|quick|medium|full JOBS=2 (plans: configs/reproduce_MODE.yaml; FROM_RECORDS=1 goes on from results/.../runs)
	$(PY) scripts/reproduce.py --mode $(MODE) --jobs $(JOBS)$(if $(FROM_RECORDS), --from-records)

aggregate: $(STAMP)  ## rebuild the tables and figures from existing runs: RUNS=outputs/reproduce/quick OUT=results
	$(PY) scripts/aggregate.py $(or $(RUNS),outputs/reproduce/$(MODE)) --out $(or $(OUT),results$(if $(filter-out quick,$(MODE)),/$(MODE)))

pretrain: $(STAMP)  ## train the embedded MNIST eps-model of task=finetune_mnist by its recipe (resumable; see docs/pretrained_mnist.md)
	OMP_NUM_THREADS=$(or $(THREADS),2) $(PY) scripts/pretrain_mnist.py

clean-outputs:  ## delete run directories (keeps outputs/cache)
	rm -rf outputs/runs outputs/multirun outputs/demo outputs/smoke

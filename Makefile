# lmcollapse — every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so that pip never resolves `torch` to a multi-GB CUDA build on a
# CPU machine. On a GPU machine the same pin installs PyPI's CUDA wheel; override to choose another.
TORCH ?= torch==2.13.0

PIPELINE ?= pipelines/tiny.yaml
# Several seeds go to a folder of their own (runs/<name>-seeds/seed-<k>), beside the single run.
RUN ?= runs/$(basename $(notdir $(PIPELINE)))$(if $(strip $(SEEDS)),-seeds)
SET ?=
SEEDS ?=
LMC := $(BIN)/python -m lmcollapse
# Paths are quoted, so PIPELINE and RUN may hold spaces (RUN="runs/my run"); SET and SEEDS are lists.
STAGE_ARGS = --pipeline "$(PIPELINE)" --run "$(RUN)" $(if $(strip $(SET)),--set $(SET)) $(if $(strip $(SEEDS)),--seeds $(SEEDS))

# A study: a grid of runs (studies/*.yaml, or a shipped study's name); LAUNCHER=local|slurm, SLOTS=N.
STUDY ?= studies/regimes.yaml
STUDY_ARGS = $(if $(strip $(LAUNCHER)),--launcher $(LAUNCHER)) $(if $(strip $(SLOTS)),--slots $(SLOTS))

.PHONY: help install bytecode run test test-fast lint status report export compare study study-plan study-status study-report \
	pretrain dry-run config data bench bench-first-run bench-study gpu-check theory clean-venv

help:
	@echo "make run                 the default pipeline ($(PIPELINE)) end to end; prints the metrics table, writes RUN/report/"
	@echo "make test                the whole test suite (what CI runs)"
	@echo "make test-fast           the unit tests only, a few minutes (end-to-end tests are marked slow)"
	@echo "make lint                ruff over the code"
	@echo "make generation-N        make generations 0..N of RUN complete (resumes, skips what is done)"
	@echo "make status              every stage of RUN checked against its manifest: complete, damaged, stale, partial, missing"
	@echo "make report              tables and figures for RUN (a run or a folder of runs)"
	@echo "make export TO=DIR       a self-contained copy of RUN to share (corpora with dataset cards, models, report)"
	@echo "make study STUDY=...     run a study's runs that are not complete (LAUNCHER=local|slurm, SLOTS=N); resumable"
	@echo "make study-plan          every run of STUDY, its folder and its estimated cost, computing nothing"
	@echo "make study-status        where every run of STUDY is: complete, partial, queued, running, failed; time left"
	@echo "make study-report        STUDY's report: means with 95% intervals, differences, Holm-adjusted tests, figures"
	@echo "make compare             the shipped regimes study (studies/regimes.yaml): run it, then report it"
	@echo "make pretrain            pretrain the base PIPELINE needs, once (cached), and nothing else"
	@echo "make dry-run             print the plan of PIPELINE without computing anything"
	@echo "make config              the resolved config of PIPELINE, every key documented"
	@echo "make data                fetch the corpus PIPELINE names into data/ (needs network)"
	@echo "make bench               the benchmarks in bench/"
	@echo "make bench-first-run     the first make run on a fresh clone, and a later one (~10 min)"
	@echo "make bench-study         a 2 x 2 study one run at a time against the local launcher with two slots"
	@echo "make gpu-check           on one CUDA GPU: two generations of the paper pipeline at OPT-125m size + make bench (<10 min; RUN= default runs/gpu-check)"
	@echo "variables: PIPELINE=$(PIPELINE) RUN=$(RUN) SET=\"key=value ...\" SEEDS=\"0 1 2\" STUDY=$(STUDY) REFERENCE=<pipeline> (make report)"

install: $(BIN)/.installed

# pip byte-compiles what it installs one file at a time; compileall does the same files on every
# core (16,000 of them: 129 s of install became 94 s on two cores). It stops at files written for
# a newer Python (torch ships one), as pip does, hence the `-`.
$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH)"
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev,lora,track]"
	-@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null
	@touch $@

# The package's own bytecode, written once before a test session: where PYTHONDONTWRITEBYTECODE is
# set, every process a test starts (hundreds) would otherwise compile it again (0.23 s of CPU each).
bytecode: install
	@$(BIN)/python -m compileall -q lmcollapse > /dev/null

# The table on the terminal, then the report (tables and figures) of the same run beside it.
run: install
	$(LMC) run $(STAGE_ARGS)
	@$(LMC) -q report --run "$(RUN)" > /dev/null
	@echo "report (tables, figures): $(RUN)/report/index.md"

generation-%: install
	$(LMC) generation $* $(STAGE_ARGS)

status: install
	$(LMC) status --run "$(RUN)"

report: install
	$(LMC) report --run "$(RUN)" $(if $(strip $(REFERENCE)),--reference "$(REFERENCE)")

# TO: a new folder; HUB=owner/name also uploads it as a hub dataset repository.
export: install
	@test -n "$(TO)" || { echo "make export needs TO=<new folder>, e.g. make export RUN=$(RUN) TO=exports/tiny"; exit 2; }
	$(LMC) export --run "$(RUN)" --to "$(TO)" $(if $(strip $(HUB)),--push-to-hub $(HUB))

# The regimes side by side, with the statistics: one mechanism, the study (studies/regimes.yaml).
compare: install
	$(LMC) study run studies/regimes.yaml $(STUDY_ARGS)
	$(LMC) study report studies/regimes.yaml

study: install
	$(LMC) study run "$(STUDY)" $(STUDY_ARGS)

study-plan: install
	$(LMC) study plan "$(STUDY)"

study-status: install
	$(LMC) study status "$(STUDY)"

study-report: install
	$(LMC) study report "$(STUDY)"

pretrain: install
	$(LMC) pretrain --pipeline "$(PIPELINE)" $(if $(strip $(SET)),--set $(SET))

dry-run: install
	$(LMC) run --dry-run $(STAGE_ARGS)

config: install
	$(LMC) config --pipeline "$(PIPELINE)" $(if $(strip $(SET)),--set $(SET))

data: install
	$(LMC) data --pipeline "$(PIPELINE)"

# One pytest-xdist worker per core (TEST_WORKERS=1: one process). A test file runs in one worker,
# so a module's fixtures (the SLURM cluster, the two-process runs) are built once; files are handed
# out in collection order, the longest first (tests/conftest.py: LONGEST_FIRST).
TEST_WORKERS ?= auto
PYTEST_PARALLEL = $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install bytecode
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The unit tests only (the end-to-end ones are marked slow): a few minutes.
test-fast: install bytecode
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check lmcollapse tests bench

bench: install
	$(BIN)/python -m bench.run_all

# The first make run on a fresh clone (install, pretraining, five generations), then a later one.
bench-first-run: install
	$(BIN)/python -m bench.first_run

# A 2 x 2 study of the tiny pipeline run one run after another (as make compare did) and by the
# local launcher with two slots: wall times and the ratio (about 10 minutes on two cores).
bench-study: install
	$(BIN)/python -m bench.study

# The GPU evidence in one command (one CUDA GPU, under 10 minutes): two generations of
# pipelines/gpu-check.yaml (the paper pipeline at OPT-125m size), then make bench's training and
# generation benchmarks in their GPU mode. Writes runs/gpu-check/ and runs/gpu-check.gpu-memory.csv.
gpu-check: install
	PYTHON="$(BIN)/python" RUN="$(or $(GPU_RUN),$(if $(filter command line,$(origin RUN)),$(RUN)),runs/gpu-check)" bash bench/gpu_check.sh

theory: install
	$(LMC) theory

clean-venv:
	rm -rf $(VENV)

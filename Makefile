# Two commands for users: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU-capable torch pair that this project's machines carry locally; override for other platforms.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo bench study study2 study3 tune-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

# Lint and format check (ruff, configured in pyproject.toml), the docs site (mkdocs.yml: broken links, anchors
# and the generated CLI reference fail it; built into the ignored site/), then the whole suite: one pytest-xdist
# worker per core, at most 4 (most of the suite waits on trainer subprocesses importing torch, one core each).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal --durations=15

# Generates shapes (once), trains the quickstart, prints its test metrics; rerunning prints the finished run's (or
# continues it, or starts it over when it was killed before its first save).
demo: $(STAMP)
	$(BIN)/clipctl train quickstart --resume restart

# Every benchmark (bench/*.py; _*.py are helpers) writes bench/results/<name>.json, then one table of all targets.
# Run it on a quiet machine: the ratios are measured side by side, but other load still adds noise.
bench: $(STAMP)
	@for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done
	@$(BIN)/python bench/_summary.py

# The loss x batch-size study (recipes/study/): every <loss>_b<batch> recipe x STUDY_SEEDS, STUDY_JOBS runs at a
# time (torch threads split between them), logs appended to $(STUDY_OUT)/logs; finished runs are kept, so rerunning
# only completes what is missing (`--resume restart`: a run killed before its first save starts over in place). Then
# the comparison goes to $(STUDY_RESULTS) (markdown, JSON, PNG), with the paired per-seed differences, the by-batch
# plot and the loss diagnostics (`clipctl study`).
STUDY_SEEDS ?= 0 1 2
STUDY_JOBS ?= 2
STUDY_OUT ?= runs/study
STUDY_RESULTS ?= bench/results/study
# data.shapes_train_size of recipes/study/base.toml (from the quickstart): generated once before the parallel runs
STUDY_SHAPES_TRAIN_SIZE := 8000

study: $(STAMP)
	$(BIN)/clipctl data fetch shapes --train-size $(STUDY_SHAPES_TRAIN_SIZE)
	mkdir -p $(STUDY_OUT)/logs $(STUDY_RESULTS)
	threads=$$(( $$(getconf _NPROCESSORS_ONLN) / $(STUDY_JOBS) )); [ $$threads -ge 1 ] || threads=1; \
	for recipe in recipes/study/*_b*.toml; do for seed in $(STUDY_SEEDS); do echo $$recipe $$seed; done; done \
	| OMP_NUM_THREADS=$$threads xargs -P $(STUDY_JOBS) -n 2 sh -c 'name=$$(basename $$0 .toml)-seed$$1; \
	  if $(BIN)/clipctl train $$0 run.seed=$$1 --name $$name --out $(STUDY_OUT) --resume restart \
	    >>$(STUDY_OUT)/logs/$$name.log 2>&1; then echo "study: $$name done"; \
	  else echo "study: $$name failed (exit $$?), see $(STUDY_OUT)/logs/$$name.log"; exit 1; fi'
	$(BIN)/clipctl compare $(STUDY_OUT) --markdown --plot $(STUDY_RESULTS)/compare.png > $(STUDY_RESULTS)/compare.md.tmp
	$(BIN)/clipctl compare $(STUDY_OUT) --json > $(STUDY_RESULTS)/compare.json.tmp
	mv $(STUDY_RESULTS)/compare.md.tmp $(STUDY_RESULTS)/compare.md
	mv $(STUDY_RESULTS)/compare.json.tmp $(STUDY_RESULTS)/compare.json
	$(BIN)/clipctl study paired $(STUDY_RESULTS)/compare.json
	$(BIN)/clipctl study by-batch $(STUDY_RESULTS)/compare.json
	$(BIN)/clipctl study diagnostics $(STUDY_OUT) $(STUDY_RESULTS)

# Study 2 (recipes/study2/, docs/guides/studies.md): A, long horizon, and B, locked towers of the first study's
# clip_b32 and sogclr_b32 seed-0 runs (so `make study` first, for B only). Each cell's lr is chosen on the validation split
# (seed 0, 0.5x/1x/2x; `clipctl study run`), then the other seeds train with it; grid, tables and plots go to
# $(STUDY2_RESULTS)/{a,b}.
# STUDY2_PARTS picks the experiments: `make study2 STUDY2_PARTS=a` needs no first study.
STUDY2_PARTS ?= a b
STUDY2_SEEDS ?= 0 1 2
STUDY2_OUT ?= runs/study2
STUDY2_RESULTS ?= bench/results/study2

study2: $(STAMP)
	$(BIN)/clipctl data fetch shapes --train-size $(STUDY_SHAPES_TRAIN_SIZE)
	case " $(STUDY2_PARTS) " in *" b "*) test -f $(STUDY_OUT)/clip_b32-seed0/ckpt.pt -a -f $(STUDY_OUT)/sogclr_b32-seed0/ckpt.pt || \
	  { echo "study2: experiment B starts from the first study's seed-0 runs: run 'make study' first"; exit 3; };; esac
	for part in $(STUDY2_PARTS); do $(BIN)/clipctl study run recipes/study2/$$part --key optim.lr --factors 0.5,1,2 \
	  --seeds "$(STUDY2_SEEDS)" --jobs $(STUDY_JOBS) --grid-out $(STUDY2_OUT)/$$part-grid --out $(STUDY2_OUT)/$$part \
	  --results $(STUDY2_RESULTS)/$$part || exit 1; done

# Study 3 (recipes/study3/): clip, siglip, dcl, sogclr γ = 0.8, isogclr_new and fastclip_v3 in study 2 A's
# setting, one part per global batch (b16, b128). Each cell's lr is chosen on the validation split (seed 0,
# 0.5x/1x/2x, widened at an edge), then seeds 1-5 train with it (paired by seed: seed 0 chose the lr and is not
# compared). Per part: grid, tables, paired differences and diagnostics in $(STUDY3_RESULTS)/<part>; then the
# parts together (compare, paired, by-batch plot) in $(STUDY3_RESULTS). Rerunning resumes.
# `make study3 STUDY3_PARTS=b16` runs batch 16 alone.
STUDY3_PARTS ?= b16 b128
STUDY3_SEEDS ?= 1 2 3 4 5
STUDY3_OUT ?= runs/study3
STUDY3_RESULTS ?= bench/results/study3

study3: $(STAMP)
	$(BIN)/clipctl data fetch shapes --train-size $(STUDY_SHAPES_TRAIN_SIZE)
	for part in $(STUDY3_PARTS); do $(BIN)/clipctl study run recipes/study3/$$part --key optim.lr --factors 0.5,1,2 \
	  --seeds "$(STUDY3_SEEDS)" --jobs $(STUDY_JOBS) --grid-out $(STUDY3_OUT)/$$part-grid --out $(STUDY3_OUT)/$$part \
	  --results $(STUDY3_RESULTS)/$$part || exit 1; done
	mkdir -p $(STUDY3_RESULTS)
	$(BIN)/clipctl compare $(addprefix $(STUDY3_OUT)/,$(STUDY3_PARTS)) --markdown > $(STUDY3_RESULTS)/compare.md.tmp
	$(BIN)/clipctl compare $(addprefix $(STUDY3_OUT)/,$(STUDY3_PARTS)) --json > $(STUDY3_RESULTS)/compare.json.tmp
	mv $(STUDY3_RESULTS)/compare.md.tmp $(STUDY3_RESULTS)/compare.md
	mv $(STUDY3_RESULTS)/compare.json.tmp $(STUDY3_RESULTS)/compare.json
	$(BIN)/clipctl study paired $(STUDY3_RESULTS)/compare.json
	$(BIN)/clipctl study by-batch $(STUDY3_RESULTS)/compare.json

# The three tuning phases on `shapes` (recipes/tune/quick/), about 15 minutes on 2 CPU cores, in their own study
# folder; rerunning resumes (finished phases are skipped). Then the status table, importance and the plots.
TUNE_DEMO_STUDY ?= runs/tune-demo
# data.shapes_train_size of recipes/quickstart.toml: generated once before the first trial
TUNE_DEMO_SHAPES_TRAIN_SIZE := 8000

tune-demo: $(STAMP)
	$(BIN)/clipctl data fetch shapes --train-size $(TUNE_DEMO_SHAPES_TRAIN_SIZE)
	for phase in 1 2 3; do $(BIN)/clipctl tune --recipe tune/quick/phase$$phase --study $(TUNE_DEMO_STUDY) || exit 1; done
	$(BIN)/clipctl tune status --study $(TUNE_DEMO_STUDY)
	$(BIN)/clipctl tune importance --study $(TUNE_DEMO_STUDY) --phase 1
	$(BIN)/clipctl tune importance --study $(TUNE_DEMO_STUDY) --phase 3
	$(BIN)/clipctl tune plot --study $(TUNE_DEMO_STUDY)

clean:
	rm -rf $(VENV) .pytest_cache site

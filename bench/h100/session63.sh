#!/usr/bin/env bash
# GPU session 63: the integration tests' GPU part (among them
# `accelerator_distillation_matches_the_cpu`) after this session's changes to distillation (the
# repeated-text fallback and the warning about validation rows the teachers trained on), with the
# `tests` binary built here with --features cuda at 2d59694 (.carry/ad/tests.xz) and
# .carry/ad/hub.tar.xz (session61.sh's Hub cache of MiniLM's config and tokenizer).
# Results -> $OUT/gpu_tests.txt
set -u
# The tests find configs/tiny.toml and its data under the repository root they were built in.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
B=/tmp/bin; mkdir -p $B
xz -dc .carry/ad/tests.xz > $B/tests; chmod +x $B/tests
mkdir -p /tmp/hf && tar -xJf .carry/ad/hub.tar.xz -C /tmp/hf
export HF_HUB_CACHE=/tmp/hf/hub HF_HUB_OFFLINE=1
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | grep -E "^test |test result"

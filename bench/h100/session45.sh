#!/usr/bin/env bash
# GPU session 45: the integration tests' GPU part at the RoBERTa/DistilBERT/ELECTRA commits (among them
# the tiny RoBERTa, DistilBERT and ELECTRA against the CPU in training, with and without dropout).
# Carried: .carry/tests.xz (the cuda build of tests/tests.rs). Results -> $OUT/gpu_tests.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/tests.xz > $B/tests; chmod +x $B/tests
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt

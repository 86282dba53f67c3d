#!/usr/bin/env bash
# GPU session 45: the integration tests' GPU part at the RoBERTa/DistilBERT/ELECTRA/XLM-RoBERTa
# commits (among them the tiny RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA against the CPU in
# training, with and without dropout). Run three times on 2026-11-23 as the families came in:
# 9 of 9 passed each time (30 s, 26 s, 37 s of wall time).
# Carried: .carry/tests.xz (the cuda build of tests/tests.rs). Results -> $OUT/gpu_tests.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/tests.xz > $B/tests; chmod +x $B/tests
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt

#!/usr/bin/env bash
# GPU session 29: the integration tests' GPU part for this commit (7 tests, among them the tiny
# MPNet against the CPU in training and evaluation). Carried: .carry/bin3/tests.xz (the cuda
# build of tests/tests.rs). Results -> $OUT/gpu_tests.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/bin3/tests.xz > $B/tests; chmod +x $B/tests
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt

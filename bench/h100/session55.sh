#!/usr/bin/env bash
# GPU session 55: the integration tests' GPU part at the distillation commit (among them the new
# `accelerator_distillation_matches_the_cpu`: the distilled objective and every gradient on CUDA
# against the CPU, dropout 0.3, alone and under R-Drop). Carries .carry/kd/tests.xz.
# Results -> $OUT/gpu_tests.txt
set -u
B=/tmp/bin; mkdir -p $B
xz -dc .carry/kd/tests.xz > $B/tests; chmod +x $B/tests
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | tail -20

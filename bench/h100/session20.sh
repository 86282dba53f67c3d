#!/usr/bin/env bash
# GPU session 20: Candle's backward patched (vendor/README.md: a first gradient is stored as it
# is, not added to a fresh tensor of zeros). The GPU tests of the patched integration-test binary;
# then the bench of the patched build (bench), of the previous commit (bench_base, unpatched) and
# PyTorch on the same card in alternating rounds; then an Nsight Compute per-kernel profile of
# the patched bert-base f32 train step (1 and 3 timed steps: one step's kernels by difference).
# Carried: .carry/bin/{tests,bench,bench_base}.xz, .carry/minilm-f16/{config,tokenizer}.json.
# Results -> $OUT/results.tgz
set -u
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
MS=/tmp/minilm-shape; mkdir -p $MS; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $MS/; : > $MS/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
log tests
$B/tests gpu --nocapture --test-threads 1 > $R/tests.txt 2>&1; echo "exit $?" >> $R/tests.txt
for round in 1 2; do
  for bin in bench bench_base; do
    log "$bin round $round"
    for m in $MS bert-base; do for d in f32 bf16; do
      $B/$bin --device cuda --model $m --random-init --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step 2>&1 | tee -a $R/${bin}_r$round.txt
    done; done
  done
  log "torch round $round"
  for m in $MS bert-base; do for d in f32 bf16; do
    python3 bench/pytorch_reference.py --device cuda --model $m --random-init --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step > $R/torch_r${round}_$(basename $m)_$d.txt 2>&1
  done; done
done
for n in 1 3; do
  log "ncu bert-base repeats $n"
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $R/ncu_bertbase_r$n.csv \
    $B/bench --device cuda --model bert-base --random-init --batch 32 --seq 128 --dtype f32 --only train_step --warmup 0 --repeats $n > $R/ncu_bertbase_r$n.out 2>&1
done
log done

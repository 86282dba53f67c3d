#!/usr/bin/env bash
# GPU session 15: the final code (after session 12, 32-bit index math in the heads kernel and 2 rows per layer-norm backward warp; the fused f32 attention kernels of session 14 were slower for 64-wide heads and are not in it). The GPU tests of the
# integration-test binary (kernels vs the CPU at model widths, dropout masks through the model,
# the earlier CPU-vs-GPU tests), then the bench next to PyTorch on the same card in two
# alternating rounds (the ncu profile loop below is skipped). Results -> $OUT/results.tgz
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
log "wick-bench round $round"
for m in $MS bert-base; do for d in f32 bf16; do
  $B/bench --device cuda --model $m --random-init --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step 2>&1 | tee -a $R/wick_r$round.txt
done; done
log "torch-bench round $round"
for m in $MS bert-base; do for d in f32 bf16; do
  python3 bench/pytorch_reference.py --device cuda --model $m --random-init --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step > $R/torch_r${round}_$(basename $m)_$d.txt 2>&1
done; done
done
for n in 1 3; do
  break  # no profile this time
  log "ncu minilm repeats $n"
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $R/ncu_minilm_r$n.csv \
    $B/bench --device cuda --model $MS --random-init --batch 32 --seq 128 --dtype f32 --only train_step --warmup 0 --repeats $n > $R/ncu_minilm_r$n.out 2>&1
done
log done

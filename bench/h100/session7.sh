#!/usr/bin/env bash
# GPU session 7: where a CUDA training step spends its time. Nsight Compute (ncu) times every
# kernel of the bench's train step (MiniLM and bert-base shapes, random weights, 32x128 f32); two
# runs that differ by two timed steps give the per-step kernel list by difference. Plus the plain
# bench (no profiler) for the wall time and a 1x8 batch for the host-side floor.
# Results -> $OUT/results.tgz
set -u
R=/tmp/results; mkdir -p $R
B=/tmp/bin; mkdir -p $B
for f in .carry/bin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
MS=/tmp/minilm-shape; mkdir -p $MS; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $MS/; : > $MS/model.safetensors
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C /tmp results; }
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
log plain
for m in $MS bert-base; do for d in f32 bf16; do
  $B/bench --device cuda --model $m --random-init --batch 32 --seq 128 --dtype $d --only forward,forward_backward,train_step 2>&1 | tee -a $R/plain.txt
done; done
$B/bench --device cuda --model $MS --random-init --batch 1 --seq 8 --dtype f32 --only forward,forward_backward,train_step 2>&1 | tee -a $R/plain_tiny.txt
for m in minilm:$MS bertbase:bert-base; do name=${m%%:*}; path=${m#*:}
  for n in 1 3; do
    log "ncu $name repeats $n"
    ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --log-file $R/ncu_${name}_r$n.csv \
      $B/bench --device cuda --model $path --random-init --batch 32 --seq 128 --dtype f32 --only train_step --warmup 0 --repeats $n > $R/ncu_${name}_r$n.out 2>&1
  done
done
log done

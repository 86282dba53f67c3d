#!/usr/bin/env bash
# GPU session 61: `adapt` on CUDA.
# 1. The integration tests' GPU part, among them the new
#    `accelerator_adaptation_repeats_and_resumes_exactly` (two runs write the same bytes; a run
#    stopped at step 10 and resumed writes the bytes of one never stopped).
# 2. adapt's memory on the GPU against the budget it prints: bert-base's shape (MiniLM's
#    vocabulary, random init, 12 x 768), the flagship's 1,155 training texts at 128 tokens,
#    batch 32, one head epoch and one full epoch, f32 then bf16. nvidia-smi samples the memory in
#    use every 100 ms; the peak minus the reading before the run is the run's.
# Carries .carry/ad/{tests,adapt}.xz (built here with --features cuda) and .carry/ad/hub.tar.xz:
# a Hub cache holding MiniLM's config.json and tokenizer.json, and an empty model.safetensors (the
# runs here start from random weights and never read it).
# Results -> $OUT/gpu_tests.txt, $OUT/adapt_<precision>.txt, $OUT/mem_<precision>.txt
set -u
# The tests find configs/tiny.toml and its data under the repository root they were built in.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
B=/tmp/bin; mkdir -p $B
for f in tests adapt; do xz -dc .carry/ad/$f.xz > $B/$f; chmod +x $B/$f; done
mkdir -p /tmp/hf && tar -xJf .carry/ad/hub.tar.xz -C /tmp/hf
export HF_HUB_CACHE=/tmp/hf/hub HF_HUB_OFFLINE=1
nvidia-smi -L
$B/tests gpu --nocapture --test-threads 1 2>&1 | tee $OUT/gpu_tests.txt | grep -E "^test |test result"
for prec in f32 bf16; do
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $OUT/mem_$prec.txt &
  smi=$!
  $B/adapt --config configs/default.toml --out /tmp/ad_$prec --epochs 1 --head-epochs 1 \
    --set 'model.init="random"' --set model.layers=12 --set model.hidden_size=768 \
    --set model.heads=12 --set model.intermediate_size=3072 \
    --set "train.precision=\"$prec\"" --device cuda > $OUT/adapt_$prec.txt 2>&1
  echo "exit $?" >> $OUT/adapt_$prec.txt
  sleep 0.3; kill $smi
  peak=$(sort -n $OUT/mem_$prec.txt | tail -1)
  echo "$prec: idle $idle MiB, peak $peak MiB, run $((peak - idle)) MiB" | tee -a $OUT/adapt_$prec.txt
  grep -E "memory budget|masked-LM loss|texts, .* steps|exit" $OUT/adapt_$prec.txt
done

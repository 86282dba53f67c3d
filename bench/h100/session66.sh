#!/usr/bin/env bash
# GPU session 66: text pairs on NLBSE. configs/nlbse.toml (MiniLM, its real f32 weights, CUDA
# f32) as shipped, where each issue is one text (title, "\n\n", body), against the same config
# reading the title and the body as a pair (`--set data.text_fields=["title"] --set
# data.pair_fields=["body"]`: [CLS] title [SEP] body [SEP], the body in segment 1, cut longest
# first with its head_tail 64). One sweep per project and arm (its grid the config's own
# dropout, 0.2, as sweep needs one), seeds 1 to 6 (each seed its own
# validation split: data.split_seed follows train.seed), the ten sweeps side by side. The rule,
# written before the run: configs/nlbse.toml reads pairs if their overall validation mean over
# the six seeds is above the joined text's by more than the standard error of the per-seed
# differences.
# The weights come as two xz pieces: /root/mini/part0 from the call before (session66a.sh),
# .carry/s66/part1 with this one. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s66; R=$W/results; mkdir -p $R $W/bin
xz -dc .carry/s66/sweep.xz > $W/bin/sweep; chmod +x $W/bin/sweep
M=$W/minilm; mkdir -p $M; cp .carry/s66/minilm/config.json .carry/s66/minilm/tokenizer.json $M/
cat /root/mini/part0 .carry/s66/part1 | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
t0=$SECONDS
for p in facebook/react tensorflow/tensorflow microsoft/vscode bitcoin/bitcoin opencv/opencv; do
  s=${p//\//__}
  for arm in joined pairs; do
    extra=()
    [ $arm = pairs ] && extra=(--set 'data.text_fields=["title"]' --set 'data.pair_fields=["body"]')
    $W/bin/sweep --config configs/nlbse.toml --set model.path=$M --set train.keep_last=0 \
      --set "data.filter.equals=\"$p\"" "${extra[@]}" --device cuda --out $W/$arm/$s --quiet \
      --json --grid model.hidden_dropout=0.2 --seeds 1,2,3,4,5,6 > $R/${arm}_$s.json 2> $R/${arm}_$s.log &
  done
done
wait
echo "ten sweeps side by side: $((SECONDS - t0)) s" > $R/wall.txt
cat $R/wall.txt; tail -n 2 $R/*.log
tar czf $OUT/results.tgz -C $W results

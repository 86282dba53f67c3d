#!/usr/bin/env bash
# GPU session 37: the NLBSE MiniLM config (configs/nlbse.toml) against the warm-up and dropout
# that session 36's sweep ranked first on validation (warmup_ratio 0, hidden_dropout 0.2; the
# sweep used split seeds 1 and 2), on three fresh validation splits (seeds 3, 4, 5: train.seed,
# which data.split_seed follows), the whole protocol (five projects, one classifier each),
# CUDA f32, six runs side by side. The weights come as two xz pieces: /root/mini/part0 from an
# earlier call of this machine, .carry/mini32/part1 with this one. Results -> $OUT/results.tgz
set -u
export HF_HUB_OFFLINE=1
W=/root/s37; R=$W/results; mkdir -p $R $W/bin
xz -dc .carry/bin7/nlbse.xz > $W/bin/nlbse; chmod +x $W/bin/nlbse
M=$W/minilm; mkdir -p $M; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $M/
cat /root/mini/part0 .carry/mini32/part1 | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
mkdir -p data/nlbse; xz -dc .carry/nlbse/issues_train.csv.xz > data/nlbse/issues_train.csv
t0=$SECONDS
for seed in 3 4 5; do
  for v in "shipped" "swept --set train.warmup_ratio=0.0 --set model.hidden_dropout=0.2"; do
    set -- $v; name=$1_$seed; shift
    $W/bin/nlbse --device cuda --config configs/nlbse.toml --set model.path=$M --set train.seed=$seed \
      --set train.keep_last=0 "$@" --out $W/$name --json > $R/$name.txt 2> $R/$name.log &
  done
done
wait
echo "six protocol runs side by side: $((SECONDS - t0)) s" > $R/wall.txt
cat $R/wall.txt; grep -H "overall.*protocol" $R/*.txt
tar czf $OUT/results.tgz -C $W results

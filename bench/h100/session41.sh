#!/usr/bin/env bash
# GPU session 41: `data.truncation = "head_tail"` (a long issue keeps its first `head_tokens` and
# its last tokens instead of its first only). First the flagship task: `sweep` of
# configs/default.toml over data.truncation head / tail / head_tail (head_tokens 32 of 128),
# seeds 1-3. Then the NLBSE protocol on the six held-out splits of heldout.py, as session 40 ran
# it with the default "head" (MPNet 0.824, MiniLM 0.786 mean test macro-F1), now with head_tail:
#   mp: configs/nlbse-mpnet.toml (three members, 512 tokens, bf16), head_tokens 128 (Sun et al.)
#   mini: configs/nlbse.toml (five members, 256 tokens, f32), head_tokens 64 (the same quarter)
# Each run also writes its test probabilities, for combine.py. The twelve runs go side by side
# in a process of its own session (setsid), so they outlive this
# call; later calls run `DIR=/root/s41/results bench/h100/poll.sh`. Once a run has started a
# project, the previous project's checkpoints are deleted (its predictions stay). MPNet's weights
# are in /root/mp from four earlier calls of this machine (see session25.sh); MiniLM's come with
# this call (.carry/minilm-f16: f16 values, loaded into f32 master weights).
set -u
W=/root/s41; . bench/h100/mpnet_setup.sh
MINI=$W/minilm; mkdir -p $MINI; cp .carry/minilm-f16/config.json .carry/minilm-f16/tokenizer.json $MINI/
xz -dc .carry/minilm-f16/model.safetensors.xz > $MINI/model.safetensors
sha256sum $MINI/model.safetensors >> $R/weights_sha256.txt
cp configs/nlbse-mpnet.toml configs/nlbse.toml bench/h100/combine.py $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" 1 2 3 4 5 6
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
t0=$SECONDS
$W/bin/sweep --device cuda --config configs/default.toml --set model.path=$MINI \
  --grid 'data.truncation="head","tail","head_tail"' --set data.head_tokens=32 --seeds 1,2,3 \
  --out $W/sweep --json --quiet > $R/flagship_sweep.json 2> $R/flagship_sweep.log
echo "rc $? wall $((SECONDS - t0)) s" >> $R/flagship_sweep.log
tail -3 $R/flagship_sweep.log
cat > $W/run.sh <<RUN
#!/usr/bin/env bash
export HF_HUB_OFFLINE=1
cd $W
for v in "mp nlbse-mpnet.toml 3 $M bf16 128" "mini nlbse.toml 5 $MINI f32 64"; do
  set -- \$v
  for split in 1 2 3 4 5 6; do
    ( t0=\$SECONDS; name=\$1_\$split
      $W/bin/nlbse --device cuda --config $W/\$2 --ensemble \$3 --test $H/test_\$split.csv \
        --set model.path=\$4 --set data.train=\"$H/train_\$split.csv\" --set data.split_seed=\$split \
        --set train.seed=42 --set train.precision=\$5 \
        --set data.truncation=\"head_tail\" --set data.head_tokens=\$6 \
        --out /dev/shm/nl_\$name --json > $R/heldout_\$name.txt 2> $R/heldout_\$name.log
      echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_\$name.txt
      mkdir -p $R/pred_\$name
      cp /dev/shm/nl_\$name/nlbse.json $R/heldout_\$name.json
      for p in /dev/shm/nl_\$name/*/test_predictions.jsonl; do
        mkdir -p $R/pred_\$name/\$(basename \$(dirname \$p)); cp \$p $R/pred_\$name/\$(basename \$(dirname \$p))/
      done ) &
  done
done
projects="facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv"
while [ -n "\$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in \$projects; do [ -d \$d/\$p ] && [ -n "\$prev" ] && rm -rf \$d/\$prev/seed-*; prev=\$p; done
  done
  echo "\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)" >> $R/timeline.txt
done
for split in 1 2 3 4 5 6; do
  echo "split \$split mp \$(python3 $W/combine.py $R/pred_mp_\$split)" >> $R/combined.txt
done
echo "\$(date +%T) done" >> $R/timeline.txt
touch $R/DONE
RUN
chmod +x $W/run.sh
setsid nohup $W/run.sh > $W/run.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
# Stay in the call while the runs go, so the machine is held; poll.sh takes over after.
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}

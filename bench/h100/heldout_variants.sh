# Sourced by the NLBSE MPNet scripts from session 48 on, after mpnet_setup.sh (W, R, M, $W/bin and
# $W/issues_train.csv set up): runs configs/nlbse-mpnet.toml (three members, bf16) on held-out
# splits SPLITS of heldout.py for each variant of VARIANTS, one line per variant, "name --set
# key=value ..." or "name @other.toml --set ..." to start from configs/other.toml instead
# (from session 54 on), every (variant, split) a process of its own side by side, in a session of its
# own so that the runs outlive the call. Each run writes $R/heldout_<name>_<split>.{txt,json,log}
# and its members' test probabilities under $R/pred_<name>_<split>/; $R/DONE when all have ended.
# A project's checkpoints are deleted once the next project of its split has started (/dev/shm
# is small; from session 58 on also the members of several configs, named <config>-seed-<seed>:
# "name --config other.toml ..." runs both configs in one process; from session 68 on, {split} in a
# variant's flags is its split's seed). Stays in the call for WAIT
# seconds (default 540), then `poll.sh` takes over.
cp configs/nlbse-mpnet*.toml $W/
H=$W/heldout; mkdir -p $H
python3 bench/h100/heldout.py "$W/issues_train.csv" "$H" $SPLITS
wc -l $H/*.csv > $R/heldout_files.txt
rm -rf /dev/shm/nl_*
nvidia-smi -L > $R/nvidia-smi.txt 2>&1
{
  echo '#!/usr/bin/env bash'
  echo 'export HF_HUB_OFFLINE=1'
  echo "cd $W"
  while read -r name sets; do
    [ -z "$name" ] && continue
    config=nlbse-mpnet.toml
    case $sets in @*) config=${sets%% *}; config=${config#@}; sets=${sets#@$config} ;; esac
    for split in $SPLITS; do
      run=${name}_$split
      flags=${sets//\{split\}/$split}
      cat <<RUN
( t0=\$SECONDS
  $W/bin/nlbse --device cuda --config $W/$config --ensemble 3 --test $H/test_$split.csv \\
    --set model.path=$M --set data.train=\\"$H/train_$split.csv\\" --set data.split_seed=$split \\
    --set train.seed=42 --set train.precision=bf16 $flags \\
    --out /dev/shm/nl_$run --json > $R/heldout_$run.txt 2> $R/heldout_$run.log
  echo "rc \$? wall \$((SECONDS - t0)) s" >> $R/heldout_$run.txt
  cp /dev/shm/nl_$run/nlbse.json $R/heldout_$run.json
  for p in /dev/shm/nl_$run/*/test_predictions* /dev/shm/nl_$run/*/valid_predictions*; do
    d=$R/pred_$run/\$(basename \$(dirname \$p)); mkdir -p \$d; cp \$p \$d/
  done ) &
RUN
    done
  done <<< "$VARIANTS"
  cat <<'RUN'
projects="facebook__react tensorflow__tensorflow microsoft__vscode bitcoin__bitcoin opencv__opencv"
while [ -n "$(jobs -r)" ]; do
  sleep 20
  for d in /dev/shm/nl_*; do
    prev=""
    for p in $projects; do [ -d $d/$p ] && [ -n "$prev" ] && rm -rf $d/$prev/*seed-*; prev=$p; done
  done
RUN
  echo "  echo \"\$(date +%T) \$(df -h /dev/shm | tail -1) \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)\" >> $R/timeline.txt"
  echo done
  echo "echo \"\$(date +%T) done\" >> $R/timeline.txt"
  echo "touch $R/DONE"
} > $W/run.sh
chmod +x $W/run.sh
setsid nohup $W/run.sh > $W/run.out 2>&1 < /dev/null &
echo "started $(date +%T)" >> $R/timeline.txt
DIR=$R bash bench/h100/poll.sh ${WAIT:-540}

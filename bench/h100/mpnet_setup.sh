# Sourced by the NLBSE MPNet scripts (sessions 31, 33) with the working folder W set: unpacks
# .carry/bin/*.xz into $W/bin, joins the weight pieces of /root/mp (four earlier calls of this
# machine, see session25.sh) into $M/model.safetensors with the carried config and tokenizer
# (sha256 to $R), writes the NLBSE training CSV to $W/issues_train.csv, and defines `log`,
# which appends a timestamped line to $R/timeline.txt and brings $R back as $OUT/results.tgz.
export HF_HUB_OFFLINE=1
R=$W/results; mkdir -p $R $W/bin
for f in .carry/bin/*.xz; do xz -dc "$f" > "$W/bin/$(basename "$f" .xz)"; done; chmod +x $W/bin/*
M=$W/mpnet; mkdir -p $M; cp .carry/mpnet/config.json .carry/mpnet/tokenizer.json $M/
cat /root/mp/part0? | xz -dc > $M/model.safetensors
sha256sum $M/model.safetensors > $R/weights_sha256.txt
xz -dc .carry/nlbse/issues_train.csv.xz > $W/issues_train.csv
log() { echo "== $(date +%T) $*" | tee -a $R/timeline.txt; tar czf $OUT/results.tgz -C $W results; }

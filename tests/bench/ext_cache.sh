#!/usr/bin/env bash
# The built CUDA extension, carried from one GPU machine to the next cold one of a session.
# The build takes ~230-250 s of device time on the H200 machine, and a machine is given back
# after 30 s idle: a second cold start with unchanged csrc/ would build the same objects again.
#
#   save:    after a build, pack build/ops_ext/<hash> (objects, .so, ninja's files) into
#            $OUT/ext-<hash>.tgz.part-aa, -ab, ... (15 MiB each: files come back at <= 16 MiB)
#   restore: unpack .extcache/ext-<hash>.tgz.part-* (copy the parts there from a reply's files,
#            then name .extcache in the call's carry) into build/ops_ext/, for this tree's hash only
#            (.extcache: list it in .git/info/exclude, not .gitignore, which is a source of every story)
#
# Safe by construction: <hash> is gpt_engine.ops._ext.build_dir()'s content hash of every csrc
# file, the flags and the torch / CUDA versions, so parts built from other sources never match.
# The transfer keeps file times, so ninja finds the objects newer than their sources and links
# nothing; if the repository's path or a command differs there, ninja rebuilds (only slower).
# Run from the repository root with PYTHONPATH set as gpu_session.sh sets it.
set -o pipefail
MODE=${1:?usage: ext_cache.sh save|restore}
DIR=$(python3 -c "from gpt_engine.ops import _ext; print(_ext.build_dir())") || exit 0
H=$(basename "$DIR")
if [ "$MODE" = save ]; then
  [ -f "$DIR/gpt_engine_ops_ext.so" ] || { echo "ext_cache: no built extension in $DIR"; exit 0; }
  tmp=$(mktemp -d)
  tar -C "$(dirname "$DIR")" --exclude=lock -czf - "$H" | split -b 15m - "$tmp/ext-$H.tgz.part-"
  total=$(du -cm "$tmp"/ext-"$H".tgz.part-* | tail -1 | cut -f1)
  n=$(ls "$tmp" | wc -l)
  if [ "$total" -gt 44 ] || [ "$n" -gt 3 ]; then
    echo "ext_cache: $n parts, $total MiB: too large to come back beside the evidence; not saved"
  else
    mv "$tmp"/ext-"$H".tgz.part-* "${OUT:?}/" && echo "ext_cache: saved $H ($n parts, $total MiB)"
  fi
  rm -rf "$tmp"
elif [ "$MODE" = restore ]; then
  if ls .extcache/ext-"$H".tgz.part-* > /dev/null 2>&1; then
    mkdir -p "$(dirname "$DIR")"
    cat .extcache/ext-"$H".tgz.part-* | tar -C "$(dirname "$DIR")" -xzf - \
      && rm -f "$DIR/lock" && echo "ext_cache: restored $H" || echo "ext_cache: restore of $H failed; building"
  else
    echo "ext_cache: no parts for $H in .extcache"
  fi
fi
exit 0

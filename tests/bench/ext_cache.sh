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
#            Unpacked aside and moved in only whole; skipped where the build is already there; a
#            restored build is not saved again. Mind the 64 MiB a call carries: tree + .whl + parts.
#            csrc files newer than a build of the same hash get an older time (same bytes: nothing
#            to recompile).
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
[[ $H =~ ^[0-9a-f]{16}$ ]] || { echo "ext_cache: no build directory ($DIR)"; exit 0; }
P=$(dirname "$DIR")
if [ "$MODE" = save ]; then
  [ -f "$DIR/gpt_engine_ops_ext.so" ] || { echo "ext_cache: no built extension in $DIR"; exit 0; }
  [ -n "$OUT" ] && [ -d "$OUT" ] || { echo "ext_cache: no \$OUT; not saved"; exit 0; }
  # restored from .extcache (this call or an earlier one on this machine): the caller has the
  # parts already, so they do not take the reply's file slots again
  [ -f "$P/.restored-$H" ] && { echo "ext_cache: $H came from .extcache; not sent back"; exit 0; }
  tmp=$(mktemp -d) || exit 0
  if tar -C "$P" --exclude=lock -czf - "$H" | split -b 15m - "$tmp/ext-$H.tgz.part-"; then
    total=$(du -cm "$tmp"/ext-"$H".tgz.part-* | tail -1 | cut -f1)
    n=$(ls "$tmp" | wc -l)
    if [ "$total" -gt 44 ] || [ "$n" -gt 3 ]; then
      echo "ext_cache: $n parts, $total MiB: too large to come back beside the evidence; not saved"
    else
      mv "$tmp"/ext-"$H".tgz.part-* "$OUT/" && echo "ext_cache: saved $H ($n parts, $total MiB)"
    fi
  else
    echo "ext_cache: packing $H failed; not saved"
  fi
  rm -rf "$tmp"
elif [ "$MODE" = restore ]; then
  if [ -f "$DIR/gpt_engine_ops_ext.so" ]; then
    echo "ext_cache: $H already built here"
  elif ls .extcache/ext-"$H".tgz.part-* > /dev/null 2>&1; then
    # unpacked beside, moved in only whole: a missing or cut part must not leave half a build
    # (a truncated object newer than its source would pass ninja's time check)
    mkdir -p "$P" && tmp=$(mktemp -d -p "$P" .restore-XXXXXX) || exit 0
    if cat .extcache/ext-"$H".tgz.part-* | tar -C "$tmp" -xzf - && [ -f "$tmp/$H/gpt_engine_ops_ext.so" ] \
        && rm -rf "$DIR" && rm -f "$tmp/$H/lock" && mv "$tmp/$H" "$DIR" && touch "$P/.restored-$H"; then
      # ninja rebuilds what is older than its sources: 0 here means the objects will be reused
      echo "ext_cache: restored $H ($(find csrc -type f -newer "$DIR/gpt_engine_ops_ext.so" | wc -l) csrc files newer than it)"
    else
      echo "ext_cache: restore of $H failed; building"
    fi
    rm -rf "$tmp"
  else
    echo "ext_cache: no parts for $H in .extcache"
    # the closest earlier build with the same flags and versions, if any: ninja then recompiles
    # only the objects whose sources differ from it (tests/bench/ext_seed.py says why that is safe)
    python3 tests/bench/ext_seed.py seed "$DIR"
  fi
  # <hash> is the content hash of every csrc file, so a build in $DIR was made from these very
  # bytes: a source that is only newer (a branch checked out and back, which rewrites the file)
  # would make ninja recompile it for nothing (~200 s for the packed GEMV's three units). So every
  # csrc file gets an old time (2000-01-01), not only those newer than the library: ninja compares
  # a source with the time its .ninja_log recorded for the object, and a build seeded from an
  # earlier one (ext_seed.py) keeps the seed's log entries for the objects it did not recompile,
  # hours older than this checkout's files. Session 22 lost 139 s and 155 s of device time so, on
  # a warm machine and on a restored build, while "0 csrc files newer than it" was printed.
  # (not in a directory ext_seed.py just seeded: its library is an earlier build's, and the newer
  # sources are exactly the ones that differ from it)
  if [ -f "$DIR/gpt_engine_ops_ext.so" ] && [ ! -f "$DIR/.seeded" ]; then
    n=$(find csrc -type f -newermt "@946684801" -print -exec touch -d "@946684800" {} + | wc -l)
    [ "$n" -gt 0 ] && echo "ext_cache: $n csrc files re-timed to 2000-01-01 (the build of the same content is here)"
  fi
fi
exit 0

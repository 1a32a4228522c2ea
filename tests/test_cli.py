"""The gpt-engine CLI: inspect, tokenize, generate; bad input -> exit 2 and one
``error: ...`` line on stderr, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpt_engine.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
    code, out, err = run_cli(capsys, "tokenize", str(path), "Hello world", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["ids"] == [15496, 995]  # r50k ids of "Hello", " world" (tiktoken r50k_base)
    code, out, _ = run_cli(capsys, "tokenize", str(path), "Hello world")
    assert out.split() == ["15496", "995"]
    assert gpt_engine.load(path).tokenizer.decode(got["ids"]) == "Hello world"


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


@pytest.mark.story("GT-005", "GT-007")
@pytest.mark.parametrize("argv,needle", [
    (["inspect", "/nonexistent/model.gguf"], "not found"),
    (["generate", "--prompt", "x", "--top-p", "2", "MODEL"], "top_p"),
    (["generate", "MODEL"], "--prompt"),
    (["generate", "MODEL", "--prompt", "x", "--max-new-tokens", "many"], "invalid int"),
    (["inspect", "MODEL", "--device", "tpu"], "unsupported device"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gives_one_error_line_and_exit_2(models, capsys, argv, needle):
    path = str(models.path("gpt2", "F32"))
    code, out, err = run_cli(capsys, *[path if a == "MODEL" else a for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.story("GT-005")
def test_malformed_file_via_the_real_executable(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    p = subprocess.run([sys.executable, "-m", "gpt_engine.cli", "inspect", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and "bad.gguf" in p.stderr
    assert "Traceback" not in p.stderr


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

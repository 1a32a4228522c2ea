"""GT-005 benchmark: open a GGUF with the real 50k GPT-2 vocabulary until the tokenizer is ready,
against ``gguf.GGUFReader`` opening the same file, both timed in this run. Recorded as evidence
(story card: ratio <= 0.2); not a timed assert."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from gpt_engine import testmodels
from gpt_engine.gguf_file import GGUFFile
from gpt_engine.tokenizer import load_tokenizer


def write_vocab_model(path) -> None:
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(1024)
    w.add_embedding_length(8)
    w.add_block_count(1)
    testmodels.add_gpt2_vocab(w)
    rng = np.random.default_rng(0)
    n_vocab = len(testmodels.gpt2_vocab()[0])
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, 8)).astype(np.float16))
    w.add_tensor("position_embd.weight", rng.standard_normal((1024, 8)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.story("GT-005")
@pytest.mark.benchmark
def test_open_with_gpt2_vocab_vs_gguf_reader(tmp_path, bench):
    path = tmp_path / "gpt2-vocab.gguf"
    write_vocab_model(path)

    def ours():
        with GGUFFile(path) as f:
            rows = f.tensors["token_embd.weight"].shape[0]
            return load_tokenizer(path, f.metadata, embedding_rows=rows)

    def reference():
        return gguf.GGUFReader(path)

    tok = ours()
    n_vocab = len(testmodels.gpt2_vocab()[0])
    assert tok.vocab_size == n_vocab == 50257
    # same vocabulary as the oracle reader sees (a fast reader that dropped tokens would be no win)
    ref = reference()
    with GGUFFile(path) as f:
        assert f.metadata["tokenizer.ggml.tokens"] == ref.fields["tokenizer.ggml.tokens"].contents()
        assert f.metadata["tokenizer.ggml.merges"] == ref.fields["tokenizer.ggml.merges"].contents()
    del ref

    t_ref = bench.cpu_time(reference, warmup=1, reps=3)
    t_open = bench.cpu_time(lambda: GGUFFile(path).close(), warmup=1, reps=5)
    t_ours = bench.cpu_time(ours, warmup=1, reps=5)
    bench.record(
        "gguf_open.gpt2_vocab", t_ours, "s", kind="time",
        references={"gguf_reader": t_ref}, higher_is_better=False,
        params={"n_vocab": n_vocab, "open_only_s": t_open, "includes": "GGUFFile + load_tokenizer"},
    )

"""GT-045: running out of GPU memory during load or generation gives one clear line
(``gpt_engine.OutOfMemoryError``: what was being allocated, the device's free/total memory, what
to try), releases what the failed call allocated, and the next load or request works.

On the GPU the out-of-memory is real: torch's caching allocator limited with
``set_per_process_memory_fraction`` (a load that cannot fit; a decode state for a huge context
or batch), or an allocation no device can serve inside a graph capture. On the CPU the same
entry points meet a simulated one (the error torch raises), which checks the conversion, the
message and the release without a GPU."""
from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch

import gpt_engine
from gpt_engine import cuda_graph, oom
from gpt_engine.cli import main
from gpt_engine.errors import EngineError, OutOfMemoryError

HAS_CUDA = torch.cuda.is_available()
PROMPT = [7, 300, 41, 12, 99]
TORCH_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
             "1.06 GiB is free.")


def _one_line(msg: str) -> None:
    assert msg.startswith("out of memory on ") and "\n" not in msg, msg


# --------------------------------------------------------------------------- the helper, on the CPU

@pytest.mark.story("GT-045")
def test_what_counts_as_a_device_out_of_memory():
    assert oom.is_oom(torch.cuda.OutOfMemoryError(TORCH_OOM))
    assert oom.is_oom(RuntimeError("CUDA error: out of memory"))       # a launch or a library call
    assert oom.is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert oom.is_oom(RuntimeError("linear_q: kernel launch failed: out of memory"))  # the extension's check
    try:  # a graph capture that could not end after it: the out-of-memory is the context
        try:
            raise torch.cuda.OutOfMemoryError(TORCH_OOM)
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as e:
        assert oom.is_oom(e)
    assert not oom.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not oom.is_oom(ValueError("out of memory"))  # only torch's errors say it for the device
    assert not oom.is_oom(OutOfMemoryError("out of memory on cuda while ..."))  # converted once, not twice
    assert oom.tried_to_allocate(torch.cuda.OutOfMemoryError(TORCH_OOM)) == "2.00 GiB"
    assert oom.tried_to_allocate(RuntimeError("CUDA error: out of memory")) is None


@pytest.mark.story("GT-045")
def test_the_message_says_what_was_allocated_the_free_memory_and_what_to_try():
    msg = oom.message("loading big.gguf (3.00 GiB of weights)", oom.LOAD_ADVICE, device="cuda:0", tried="2.00 GiB",
                      free=1 << 30, total=80 << 30, fraction=0.25, estimate=int(3.5 * (1 << 30)))
    _one_line(msg)
    assert msg == ("out of memory on cuda:0 while loading big.gguf (3.00 GiB of weights); an allocation of 2.00 GiB "
                   "failed; the device has 1.00 GiB free of 80.00 GiB, and this process may use 25% of it "
                   "(torch.cuda.set_per_process_memory_fraction); memory_estimate() puts this at about 3.50 GiB; "
                   f"try {oom.LOAD_ADVICE}")
    # torch without a fraction getter (2.11): an allocation smaller than what is free names the
    # likely limits; one larger than what is free needs no such note
    msg = oom.message("loading big.gguf", oom.LOAD_ADVICE, tried="2.00 MiB", free=100 << 30, total=140 << 30)
    assert ("the device has 100.00 GiB free of 140.00 GiB, more than the failed allocation: a per-process limit "
            "(torch.cuda.set_per_process_memory_fraction) or fragmentation stops it;") in msg, msg
    msg = oom.message("loading big.gguf", oom.LOAD_ADVICE, tried="2.00 GiB", free=1 << 30, total=140 << 30)
    assert "the device has 1.00 GiB free of 140.00 GiB; memory_estimate" not in msg and "per-process" not in msg, msg
    # only what is known
    msg = oom.message("running the forward of 9 tokens", oom.GENERATE_ADVICE)
    assert msg == f"out of memory on cuda while running the forward of 9 tokens; try {oom.GENERATE_ADVICE}"
    for words in ("shorter context", "fewer prompts", "quantized"):
        assert words in oom.GENERATE_ADVICE
    assert "quantized" in oom.LOAD_ADVICE
    assert OutOfMemoryError.__mro__[1:3] == (EngineError, MemoryError)
    assert gpt_engine.OutOfMemoryError is OutOfMemoryError


@pytest.mark.story("GT-045")
def test_converted_releases_the_failed_calls_tensors_while_the_error_is_held(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0)
    held = []

    def allocate_then_fail():
        t = torch.empty(1 << 20)
        held.append(weakref.ref(t))
        raise torch.cuda.OutOfMemoryError(TORCH_OOM)

    with pytest.raises(OutOfMemoryError) as err:
        with oom.converted(torch.device("cuda"), lambda: "doing it", "something smaller", lambda: 5 << 30):
            allocate_then_fail()
    assert held[0]() is None  # its frame was cleared: the tensor is gone although `err` holds the error
    assert str(err.value) == ("out of memory on cuda while doing it; an allocation of 2.00 GiB failed; the device has "
                              "3.00 GiB free of 80.00 GiB; memory_estimate() puts this at about 5.00 GiB; try "
                              "something smaller")
    assert err.value.__suppress_context__  # one line, no torch traceback under it...
    assert isinstance(err.value.__context__, torch.cuda.OutOfMemoryError)  # ...but kept for debugging

    # anything else passes through untouched, and an estimate that fails does not hide the error
    with pytest.raises(ValueError, match="not memory"):
        with oom.converted(torch.device("cuda"), lambda: "x", "y"):
            raise ValueError("not memory")

    def broken_estimate():
        raise KeyError("kv_cache")

    with pytest.raises(OutOfMemoryError, match="while x; the device has"):
        with oom.converted(torch.device("cuda"), lambda: "x", "y", broken_estimate):
            raise RuntimeError("CUDA error: out of memory")


# --------------------------------------------------------------------------- the entry points, on the CPU

def _fail_once(monkeypatch, owner, name, held):
    """owner.name runs, then raises torch's out-of-memory (once); weak references to what it
    allocated and to its first argument (the object being built, or its input) go to `held`."""
    real = getattr(owner, name)
    calls = []

    def hungry(*a, **k):
        out = real(*a, **k)
        if not calls:
            calls.append(1)
            t = torch.empty(1 << 20)  # stands for what a real call had allocated before it failed
            held.extend([weakref.ref(t), weakref.ref(a[0])])
            raise torch.cuda.OutOfMemoryError(TORCH_OOM)
        return out

    monkeypatch.setattr(owner, name, hungry)


@pytest.mark.story("GT-045")
def test_a_load_that_runs_out_of_memory_releases_the_half_built_model(models, monkeypatch):
    from gpt_engine.models.gpt2 import GPT2

    path = models.path("gpt2", "F32")
    want = gpt_engine.load(path).generate(PROMPT, max_new_tokens=8, stop_at_eos=False).token_ids
    nets, held = [], []
    real_init = GPT2.__init__

    def init(self, *a, **k):
        nets.append(weakref.ref(self))
        real_init(self, *a, **k)
        t = torch.empty(1 << 20)
        held.append(weakref.ref(t))
        raise torch.cuda.OutOfMemoryError(TORCH_OOM)

    monkeypatch.setattr(GPT2, "__init__", init)
    with pytest.raises(OutOfMemoryError) as err:
        gpt_engine.load(path)
    monkeypatch.undo()
    assert nets[0]() is None and held[0]() is None
    msg = str(err.value)
    _one_line(msg)
    assert f"while loading {path.name} (" in msg and "of weights" in msg and "an allocation of 2.00 GiB" in msg
    assert "memory_estimate() puts this at about" in msg and oom.LOAD_ADVICE in msg
    assert gpt_engine.load(path).generate(PROMPT, max_new_tokens=8, stop_at_eos=False).token_ids == want


@pytest.mark.story("GT-045")
@pytest.mark.parametrize("where", ["decode state", "prefill", "decode step"])
def test_a_request_that_runs_out_of_memory_leaves_the_model_usable(models, monkeypatch, where):
    """The decode loop (the GPU path of generate, and generate_batch on every device) fails in
    each of its stages; the decoders are dropped, the weights stay, the same request then gives
    the same ids."""
    m = gpt_engine.load(models.path("gpt2", "F32"))
    prompts = [PROMPT, PROMPT[:3]]
    want = [o.token_ids for o in m.generate_batch(prompts, max_new_tokens=6, stop_at_eos=False)]
    held = [weakref.ref(d) for d in m._decoders.values()]  # reused by the next request, or replaced
    if where == "decode state":
        _fail_once(monkeypatch, cuda_graph.DecodeState, "__init__", held)
        m._decoders.clear()  # the request allocates a new one
    else:
        _fail_once(monkeypatch, m.net, "forward" if where == "prefill" else "decode_logits", held)
    with pytest.raises(OutOfMemoryError) as err:
        m.generate_batch(prompts, max_new_tokens=6, stop_at_eos=False)
    monkeypatch.undo()
    assert held and all(r() is None for r in held) and not m._decoders
    msg = str(err.value)
    _one_line(msg)
    stage = "allocating the decode state (KV cache " if where == "decode state" else "a graph capture or a decode step"
    assert stage in msg and "a batch of 2 sequences of up to 11 positions" in msg, msg
    assert oom.GENERATE_ADVICE in msg
    assert [o.token_ids for o in m.generate_batch(prompts, max_new_tokens=6, stop_at_eos=False)] == want


@pytest.mark.story("GT-045")
def test_the_cli_prints_the_error_as_one_line(monkeypatch, capsys):
    def load(*a, **k):
        raise OutOfMemoryError(oom.message("loading big.gguf (3.00 GiB of weights)", oom.LOAD_ADVICE))

    monkeypatch.setattr(gpt_engine, "load", load)
    code = main(["generate", "--prompt", "Hello", "--device", "cuda"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"error: out of memory on cuda while loading big.gguf (3.00 GiB of weights); try {oom.LOAD_ADVICE}\n"


# --------------------------------------------------------------------------- real ones, on the GPU

@contextlib.contextmanager
def memory_limit(extra: int):
    """torch's caching allocator may reserve at most ``extra`` bytes more than it holds now
    (what it caches is handed back first); the previous fraction comes back afterwards."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.7
    was = get() if get is not None else 1.0
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + extra) / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(was)


@pytest.mark.story("GT-045")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_a_load_that_cannot_fit_raises_releases_and_the_next_load_works(models):
    small = models.path("gpt2", "F16")
    big = models.path("gpt2", "F16", n_embd=1024, n_layer=8)  # ~200 MiB of weights
    m = gpt_engine.load(small, device="cuda")
    want = m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids
    del m
    gc.collect()
    before = torch.cuda.memory_allocated()
    with memory_limit(0):
        with pytest.raises(OutOfMemoryError) as err:
            gpt_engine.load(big, device="cuda")
        after = torch.cuda.memory_allocated()  # while the error is held: the half-built model is not
    assert after <= before, f"{after - before} bytes of the failed load still allocated"
    msg = str(err.value)
    _one_line(msg)
    assert f"while loading {big.name} (" in msg and " free of " in msg and "memory_estimate()" in msg, msg
    assert "set_per_process_memory_fraction" in msg and oom.LOAD_ADVICE in msg, msg
    m = gpt_engine.load(small, device="cuda")
    assert m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids == want


@pytest.mark.story("GT-045")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("how", ["long context", "large batch"])
def test_a_decode_state_that_cannot_fit_raises_and_the_model_still_generates(models, how):
    m = gpt_engine.load(models.path("llama", "F16", n_ctx=1 << 20), device="cuda")  # 256 B of KV per position
    want = m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids
    before = torch.cuda.memory_allocated()
    with memory_limit(16 << 20):
        with pytest.raises(OutOfMemoryError) as err:
            if how == "long context":  # 256 MiB of KV cache
                m.generate(PROMPT, max_new_tokens=m.config.n_ctx - len(PROMPT), stop_at_eos=False)
            else:                      # 64 x 65,792 positions: 1 GiB
                m.generate_batch([PROMPT] * 64, max_new_tokens=1 << 16, stop_at_eos=False)
        assert torch.cuda.memory_allocated() <= before
    msg = str(err.value)
    _one_line(msg)
    assert "allocating the decode state (KV cache " in msg and " free of " in msg, msg
    assert oom.GENERATE_ADVICE in msg
    assert not m._decoders
    assert m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids == want
    outs = m.generate_batch([PROMPT, PROMPT], max_new_tokens=16, stop_at_eos=False)
    assert [o.token_ids for o in outs] == [want, want]


@pytest.mark.story("GT-045")
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.parametrize("where", ["prefill", "decode step"])
def test_an_out_of_memory_inside_a_graph_capture_leaves_the_model_usable(models, monkeypatch, where):
    """An allocation no device can serve, made while the prefill or the decode step is being
    captured (the warm-up before each capture runs unharmed)."""
    m = gpt_engine.load(models.path("gpt2", "F16"), device="cuda")
    want = m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids
    m._decoders.clear()  # the next request captures its graphs again
    name = "forward" if where == "prefill" else "decode_logits"
    real = getattr(m.net, name)

    def hungry(*a, **k):
        if torch.cuda.is_current_stream_capturing():
            torch.empty(1 << 40, dtype=torch.uint8, device="cuda")  # 1 TiB, as torch's own capture-OOM test
        return real(*a, **k)

    monkeypatch.setattr(m.net, name, hungry)
    with pytest.raises(OutOfMemoryError) as err:
        m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False)
    monkeypatch.undo()
    msg = str(err.value)
    _one_line(msg)
    assert "the prefill, a graph capture or a decode step of 1 sequence" in msg, msg
    assert not m._decoders
    assert m.generate(PROMPT, max_new_tokens=16, stop_at_eos=False).token_ids == want

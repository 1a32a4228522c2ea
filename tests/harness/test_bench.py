"""The bench fixture's records: physics checks mark impossible numbers invalid (never dropped)."""
import pytest

from gates.bench import Baselines, Bench

pytestmark = pytest.mark.story("GT-042")


def make_bench(device="cuda", copy=3000.0, matmul=700.0):
    base = Baselines()
    # Pretend the session already measured the device: no GPU needed to test the checks.
    base.values[device] = {"copy_gbps": copy, "matmul_tflops": matmul}
    sink = []
    return Bench(device, base, sink, device_name="NVIDIA H100 80GB HBM3" if device == "cuda" else None), sink


def test_bandwidth_above_copy_is_invalid_and_kept():
    b, sink = make_bench()
    ok = b.record("layernorm.fp16", 2500.0, "GB/s", kind="bandwidth", references={"torch": 1000.0})
    bad = b.record("layernorm.fp16", 3400.0, "GB/s", kind="bandwidth", references={"torch": 1000.0})
    assert ok["valid"] and ok["ratios"] == {"torch": 2.5, "copy": 2500.0 / 3000.0}
    assert not bad["valid"] and "exceeds 1.1 x measured copy bandwidth" in bad["invalid_reason"]
    assert sink == [ok, bad]                    # recorded, not dropped
    tb = b.record("x", 3.4, "TB/s", kind="bandwidth")   # unit conversion: 3400 GB/s
    assert not tb["valid"]


def test_flops_above_matmul_rate_time_nonpositive_and_memory_floor():
    b, _ = make_bench()
    assert not b.record("attention_prefill.fp16.T4096", 900.0, "TFLOP/s", kind="flops")["valid"]
    assert b.record("attention_prefill.fp16.T4096", 400.0, "TFLOP/s", kind="flops", references={"sdpa": 405.0})["valid"]
    assert not b.record("t", 0.0, "s", kind="time")["valid"]
    assert not b.record("t", -1.0, "ms", kind="time")["valid"]
    assert not b.record("t", float("nan"), "s", kind="time")["valid"]
    m = b.record("weights.gpt2_124m.f16", 100e6, "B", kind="memory", params={"n_params": 124e6, "bits": 16})
    assert not m["valid"] and "below parameters x bits" in m["invalid_reason"]
    assert b.record("weights.gpt2_124m.f16", 250e6, "B", kind="memory", params={"n_params": 124e6, "bits": 16})["valid"]


def test_a_roofline_is_checked_against_what_defines_it_when_recorded():
    """A decode roofline must be the weight bytes a token at the run's copy bandwidth, a prefill one
    the matmul FLOPs a token at the run's matmul rate (within physics.ROOFLINE_SLACK), and the
    figure cannot pass it; a roofline without either definition is not believed."""
    b, _ = make_bench()  # copy 3,000 GB/s, matmul 700 TFLOP/s
    wb = 3000e9 / 400  # a 400 tok/s roofline
    ok = b.record("perf.decode.m.F16", 200.0, "tok/s", kind="throughput", references={"roofline": 400.0},
                  params={"weight_bytes_per_token": wb})
    assert ok["valid"] and ok["ratios"]["roofline"] == 0.5
    # a subprocess's own copy measurement, 3% under the run's (gpt-oss-20b): within the slack
    assert b.record("perf.decode.m.F16", 200.0, "tok/s", kind="throughput", references={"roofline": 388.0},
                    params={"weight_bytes_per_token": wb})["valid"]
    deflated = b.record("perf.decode.m.F16", 200.0, "tok/s", kind="throughput", references={"roofline": 250.0},
                        params={"weight_bytes_per_token": wb})
    assert not deflated["valid"] and "reference roofline 250 is not" in deflated["invalid_reason"]
    above = b.record("perf.decode.m.F16", 450.0, "tok/s", kind="throughput", references={"roofline": 400.0},
                     params={"weight_bytes_per_token": wb})
    assert not above["valid"] and "above its roofline" in above["invalid_reason"]
    bare = b.record("perf.decode.m.F16", 200.0, "tok/s", kind="throughput", references={"roofline": 400.0})
    assert not bare["valid"] and "without what defines it" in bare["invalid_reason"]
    # prefill: 2 FLOPs per multiplied weight; the weight bytes do not define its roofline
    pp = b.record("perf.prefill.m.F16", 1e5, "tok/s", kind="throughput", references={"roofline": 7e5},
                  params={"matmul_params": 5e8, "weight_bytes_per_token": wb})
    assert pp["valid"], pp["invalid_reason"]
    wrong = b.record("perf.prefill.m.F16", 1e5, "tok/s", kind="throughput", references={"roofline": 7e5},
                     params={"matmul_params": 1e9, "weight_bytes_per_token": wb})
    assert not wrong["valid"] and "FLOPs a token" in wrong["invalid_reason"]


def test_lower_is_better_ratio_and_bad_reference():
    b, _ = make_bench("cpu")
    m = b.record("gguf_open.gpt2_vocab", 0.5, "s", kind="time", references={"gguf_reader": 6.0})
    assert m["higher_is_better"] is False and m["ratios"]["gguf_reader"] == pytest.approx(12.0)
    bad = b.record("gguf_open.gpt2_vocab", 0.5, "s", kind="time", references={"gguf_reader": 0.0})
    assert not bad["valid"] and "reference gguf_reader" in bad["invalid_reason"]


def test_unknown_kind_or_unit_is_a_programming_error():
    b, _ = make_bench()
    with pytest.raises(ValueError, match="kind"):
        b.record("x", 1.0, "GB/s", kind="speed")
    with pytest.raises(ValueError, match="unit"):
        b.record("x", 1.0, "GiB/s", kind="bandwidth")


def test_cpu_time_is_a_positive_median():
    b, _ = make_bench("cpu")
    calls = []
    t = b.cpu_time(lambda: calls.append(sum(range(2000))), warmup=1, reps=5)
    assert t > 0 and len(calls) == 6


def test_faster_than_a_launch_is_invalid():
    b, _ = make_bench()
    assert "faster than a kernel launch" in b.record("t", 1e-12, "s", kind="time")["invalid_reason"]
    assert b.record("t", 2e-6, "s", kind="time")["valid"]
    m = b.record("layernorm.fp16", 2500.0, "GB/s", kind="bandwidth", params={"time_s": 1e-9})
    assert not m["valid"] and "params.time_s" in m["invalid_reason"]
    cpu, _ = make_bench("cpu")
    assert not cpu.record("t", 1e-9, "s", kind="time")["valid"]


def test_timed_calls_are_not_traced_but_warmup_calls_are():
    """The used-files trace slows Python down: the bench fixture pauses it while it times."""
    from gates import tracer
    b, _ = make_bench("cpu")
    seen = []
    tr = tracer.start()
    scope = tr.begin()
    try:
        b.cpu_time(lambda: seen.append(tr._installed()), warmup=1, reps=3)
    finally:
        tr.end(scope, "bench test")
    assert seen == [True, False, False, False]
    assert __file__ in scope                    # the warm-up call was noted
    with pytest.raises(ValueError, match="warmup"):
        b.cpu_time(lambda: None, warmup=0, reps=3)

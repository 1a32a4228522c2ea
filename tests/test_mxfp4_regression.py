"""GT-043: MXFP4 regression against stored baselines of greedy ids and logits.

tests/baselines/mxfp4_regression.json holds, for three seeded MXFP4 test models (GPT-2 and
Llama with every matrix in MXFP4, the small gpt-oss with its experts in MXFP4), what an
independent oracle computed once: transformers' float32 model on the weights gguf-py
dequantizes from the file (tests/baselines/make_mxfp4_baselines.py writes it, by hand). The
oracle tests (GT-026, GX-002) compare against whatever transformers says today; these compare
against numbers fixed in the repository, so a drift in our MXFP4 path shows up even when the
oracle drifts with it, and no oracle has to run.

Each test writes the model file again and checks its sha256 against the stored one: a
different file means the stored numbers no longer describe it, and the test fails with a line
that names the script (it never passes, nor regenerates by itself). Then the file is loaded
through ``gpt_engine.load`` on the device and compared (``compare``):
- greedy ids from ``Model.generate`` (the decode path with its KV cache);
- the argmax of one full forward (``Model.logits``) over prompt + stored ids, at each step;
- a fingerprint: the stored 8 largest logits at 4 positions of that forward.
The CPU computes in float32: everything exact, logits within logits_max_abs_f32. CUDA computes
in fp16 activations: logits within nmse_fp16_model, ids exact up to the first near-tie.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

import gpt_engine
from gpt_engine import testmodels
from tests.tolerances import tol

STORY = pytest.mark.story("GT-043")
BASELINE = Path(__file__).parent / "baselines" / "mxfp4_regression.json"
REGENERATE = "python tests/baselines/make_mxfp4_baselines.py"

# name -> (generator in gpt_engine.testmodels, its arguments, prompt length). GPT-2 and Llama are
# the conftest `models` fixture's files (shared with the other tests of a session); gpt-oss is
# make_gpt_oss's default shape (2 layers, 4 experts top-2, window 8, YaRN), prompted with 4 windows.
MODELS = {
    "gpt2-MXFP4": ("make_gpt2", {"qtype": "MXFP4", "vocab": "small"}, 16),
    "llama-MXFP4": ("make_llama", {"qtype": "MXFP4", "vocab": "small"}, 16),
    "gpt-oss-MXFP4": ("make_gpt_oss", {"qtype": "F32", "expert_qtype": "MXFP4", "vocab": "small"}, 32),
}
N_NEW = 32              # greedy ids per model
TOP_K = 8               # logits per fingerprint position
STEPS = (0, 7, 15, 31)  # the fingerprint positions are those that predict these greedy steps
# fp16 activations move logits by ~1e-2, so where the oracle's top two logits are closer than this
# the CUDA path may take the other token: the same margin tests/test_model_gpt_oss_cuda.py allows
# its greedy comparison. After such a step the two paths part, so on CUDA the generated ids are
# compared up to the first of them (the script picks prompts where that comes late or never).
GREEDY_MARGIN = 0.02
# On the CPU both sides are float32 within logits_max_abs_f32 of the oracle, so a step whose gap
# is at least twice that cannot flip: the script only stores paths where every gap is, and the
# CPU comparison asks for every id exactly.
CPU_MARGIN = 2 * tol("logits_max_abs_f32")

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")])


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    """The libraries that decide the model file's bytes (torch, numpy, gguf) and the oracle's numbers."""
    def version(p: str) -> str:
        try:
            return importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:  # e.g. a module on PYTHONPATH without metadata
            return "not installed"

    return {p: version(p) for p in ("transformers", "gguf", "torch", "numpy")}


def stale_reason(name: str, path: Path, entry: dict, stored_versions: dict) -> str | None:
    """One line when the file just written is not the one the baseline was computed on."""
    spec = MODELS[name]
    if (entry.get("generator"), entry.get("args")) != spec[:2]:
        return (f"{name}: the baseline was made with {entry.get('generator')}({entry.get('args')}), the test makes "
                f"{spec[0]}({spec[1]}): regenerate it with `{REGENERATE}` and review the diff")
    got = sha256(path)
    if got != entry["gguf_sha256"]:
        now = versions()
        moved = {p: f"{v} -> {now[p]}" for p, v in stored_versions.items() if now.get(p) != v} or "none"
        return (f"{name}: the generated GGUF's sha256 is {got[:16]}..., the baseline's is {entry['gguf_sha256'][:16]}... "
                f"(library versions changed: {moved}): the generator or a library drifted; regenerate the baseline "
                f"with `{REGENERATE}` and review the diff")
    return None


def fingerprint_error(fp: dict, row: torch.Tensor) -> torch.Tensor:
    """Our logits at one position against the stored top-k: the error at each stored id, then,
    for every other token that rises above the smallest stored value, by how much (the oracle's
    value there is at most that smallest one, so this is a lower bound on that token's error)."""
    row = row.double().cpu()
    ids = torch.tensor(fp["ids"])
    ref = torch.tensor(fp["values"], dtype=torch.float64)
    rest = row.clone()
    rest[ids] = -torch.inf
    excess = rest - ref.min()
    return torch.cat((row[ids] - ref, excess[excess > 0]))


def compare(entry: dict, ours_ids: list[int], logits: torch.Tensor, device: str) -> list[str]:
    """Every way our run differs from the stored baseline beyond what ``device`` allows; [] when
    none. ``ours_ids``: Model.generate's greedy ids after entry["prompt"]; ``logits``: Model.logits
    over entry["prompt"] + entry["ids"][:-1], [positions, vocab]."""
    ids, gaps, n_prompt = entry["ids"], entry["top2_gap"], len(entry["prompt"])
    cpu = device == "cpu"
    problems = []
    if len(ours_ids) != len(ids):
        problems.append(f"generated {len(ours_ids)} ids, the baseline has {len(ids)}")
    tie = next((i for i, g in enumerate(gaps) if g < GREEDY_MARGIN), len(ids))
    for i, (a, b) in enumerate(zip(ours_ids, ids if cpu else ids[:tie])):
        if a != b:
            problems.append(f"greedy step {i}: ours {a}, baseline {b} (oracle top-2 gap there {gaps[i]:.3g})")
            break  # the paths part here; later steps follow different prefixes
    picked = logits[n_prompt - 1:n_prompt - 1 + len(ids)].argmax(-1).tolist()
    for i, (a, b) in enumerate(zip(picked, ids)):
        if a != b and (cpu or gaps[i] >= GREEDY_MARGIN):
            problems.append(f"full forward, step {i}: argmax {a}, baseline {b} (oracle top-2 gap {gaps[i]:.3g})")
    for fp in entry["fingerprint"]:
        err = fingerprint_error(fp, logits[fp["pos"]])
        if cpu:
            worst = float(err.abs().max())
            if worst > tol("logits_max_abs_f32"):
                problems.append(f"logits at position {fp['pos']}: max |ours - baseline| = {worst:.3g} > "
                                f"logits_max_abs_f32 {tol('logits_max_abs_f32'):.3g}")
        else:
            nmse = float((err ** 2).sum() / (torch.tensor(fp["values"], dtype=torch.float64) ** 2).sum())
            if nmse > tol("nmse_fp16_model"):
                problems.append(f"logits at position {fp['pos']}: NMSE vs baseline = {nmse:.3g} > "
                                f"nmse_fp16_model {tol('nmse_fp16_model'):.3g}")
    return problems


@pytest.fixture(scope="module")
def baseline() -> dict:
    return json.loads(BASELINE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model_file(models, tmp_path_factory):
    """name -> the model file written again by the generator (once per module)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            gen, args, _ = MODELS[name]
            if gen == "make_gpt_oss":
                path = tmp_path_factory.mktemp("mxfp4-regression") / f"{name}.gguf"
                testmodels.make_gpt_oss(path, **args)
            else:
                path = models.path({"make_gpt2": "gpt2", "make_llama": "llama"}[gen], **args)
            made[name] = path
        return made[name]

    return get


@STORY
@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("name", list(MODELS))
def test_mxfp4_model_matches_the_stored_baseline(baseline, model_file, name, device):
    entry = baseline["models"][name]
    path = model_file(name)
    stale = stale_reason(name, path, entry, baseline["versions"])
    if stale:
        pytest.fail(stale, pytrace=False)
    m = gpt_engine.load(path, device=device)
    ours = m.generate(entry["prompt"], max_new_tokens=len(entry["ids"]), stop_at_eos=False).token_ids
    logits = m.logits(entry["prompt"] + entry["ids"][:-1])
    assert logits.shape == (len(entry["prompt"]) + len(entry["ids"]) - 1, m.config.vocab_size)
    problems = compare(entry, ours, logits, device)
    assert not problems, f"{name} on {device} drifted from the stored baseline:\n" + "\n".join(problems)


@STORY
def test_the_baseline_file_is_what_the_comparison_assumes(baseline):
    """Every model, its ids, gaps and fingerprints are there; every stored gap allows the CPU's
    exact comparison; the file stays small."""
    assert set(baseline["models"]) == set(MODELS)
    assert set(baseline["versions"]) == {"transformers", "gguf", "torch", "numpy"}
    for name, e in baseline["models"].items():
        assert len(e["prompt"]) == MODELS[name][2] and len(e["ids"]) == len(e["top2_gap"]) == N_NEW, name
        assert min(e["top2_gap"]) >= CPU_MARGIN, f"{name}: a stored step is a near-tie even in float32"
        assert [fp["pos"] for fp in e["fingerprint"]] == [len(e["prompt"]) - 1 + s for s in STEPS], name
        for fp, s in zip(e["fingerprint"], STEPS):
            assert len(fp["ids"]) == len(set(fp["ids"])) == len(fp["values"]) == TOP_K, name
            assert fp["ids"][0] == e["ids"][s] and fp["values"] == sorted(fp["values"], reverse=True), name
        assert len(e["gguf_sha256"]) == 64
    assert BASELINE.stat().st_size < 16 * 1024


def _exact_logits(entry: dict, vocab: int) -> torch.Tensor:
    """Logits that agree with the baseline everywhere it speaks: the stored top-k at the
    fingerprint positions (every other token 1 below), the stored id on top at every step."""
    n_prompt, ids = len(entry["prompt"]), entry["ids"]
    out = torch.zeros(n_prompt + len(ids) - 1, vocab)
    for i, t in enumerate(ids):
        out[n_prompt - 1 + i, t] = 1.0
    for fp in entry["fingerprint"]:
        row = torch.full((vocab,), min(fp["values"]) - 1.0)
        row[fp["ids"]] = torch.tensor(fp["values"])
        out[fp["pos"]] = row
    return out


@STORY
@pytest.mark.parametrize("name", list(MODELS))
def test_the_comparison_catches_drift(baseline, name):
    """The helper the regression test uses passes the baseline itself, passes changes inside
    the device's tolerance, and reports each kind of drift beyond it."""
    entry = baseline["models"][name]
    vocab = 512  # the small vocabulary of every model here
    ids, exact = list(entry["ids"]), _exact_logits(entry, vocab)
    fp = entry["fingerprint"][0]  # step 0: never a near-tie (the script's choice), so CUDA checks its argmax too
    t_cpu = tol("logits_max_abs_f32")
    for device in ("cpu", "cuda"):
        assert compare(entry, ids, exact, device) == [], device

    def nudged(delta: float, where: int = 3) -> torch.Tensor:
        x = exact.clone()
        x[fp["pos"], fp["ids"][where]] += delta
        return x

    # float32: a stored logit off by half the tolerance passes, by 1.5x it is caught
    assert compare(entry, ids, nudged(0.5 * t_cpu), "cpu") == []
    got = compare(entry, ids, nudged(-1.5 * t_cpu), "cpu")
    assert len(got) == 1 and f"position {fp['pos']}" in got[0] and "logits_max_abs_f32" in got[0], got
    # fp16: noise on the fingerprint at half the NMSE bound passes, at twice it is caught
    ref = torch.tensor(fp["values"], dtype=torch.float64)
    noise = torch.randn(TOP_K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for scale, caught in ((0.5, False), (2.0, True)):
        x = exact.clone()
        want = scale * tol("nmse_fp16_model") * float((ref ** 2).sum())
        x[fp["pos"], fp["ids"]] = (ref + noise * (want / float((noise ** 2).sum())) ** 0.5).float()
        got = [p for p in compare(entry, ids, x, "cuda") if "nmse_fp16_model" in p]
        assert bool(got) == caught, (scale, got)
    # a token outside the stored top-k rising above them is caught on both devices
    x = exact.clone()
    outsider = next(t for t in range(vocab) if t not in fp["ids"])
    x[fp["pos"], outsider] = max(fp["values"]) + 1.0
    for device in ("cpu", "cuda"):
        got = compare(entry, ids, x, device)
        assert any(f"position {fp['pos']}" in p for p in got) and any("argmax" in p for p in got), (device, got)
    # a changed greedy id is caught on both devices at a step the CUDA comparison covers (step 0
    # is covered: the script only stores prompts whose first step is not a near-tie)
    assert entry["top2_gap"][0] >= GREEDY_MARGIN
    for device in ("cpu", "cuda"):
        changed = [(ids[0] + 1) % vocab] + ids[1:]
        got = compare(entry, changed, exact, device)
        assert got == [f"greedy step 0: ours {changed[0]}, baseline {ids[0]} (oracle top-2 gap there "
                       f"{entry['top2_gap'][0]:.3g})"], (device, got)
        assert compare(entry, ids[:-1], exact, device)[0].startswith("generated 31 ids")


@STORY
def test_a_changed_model_file_asks_for_regeneration(baseline, tmp_path):
    """A file whose bytes differ from the baseline's fails with one line naming the script; a
    changed generator spec does too. The file the baseline names passes."""
    name = "llama-MXFP4"
    entry = dict(baseline["models"][name])
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF not the baseline's bytes")
    msg = stale_reason(name, path, entry, baseline["versions"])
    assert msg is not None and "\n" not in msg and REGENERATE in msg and "sha256" in msg
    assert stale_reason(name, path, dict(entry, gguf_sha256=sha256(path)), baseline["versions"]) is None
    msg = stale_reason(name, path, dict(entry, args={"qtype": "Q4_0", "vocab": "small"}), baseline["versions"])
    assert msg is not None and "\n" not in msg and REGENERATE in msg

"""Sources come from what ran, and are precise enough to live with: on the real repository, a
kernel story's evidence depends on its kernel and the code its tests ran, not on the CLI,
the reports or the tokenizer; the harness files every story depends on are exactly the
plugin's and the verdict's own code."""
import json
import os
import subprocess
import sys

import pytest

from gates import catalog, sources
from gates.paths import resolve

pytestmark = pytest.mark.story("GT-042")

REAL = resolve()


def _closure(start: list[str], known) -> set[str]:
    imports = sources.Imports(REAL.root, known)
    todo, seen = list(start), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [g for g in imports(f) if g.startswith("gates/")]
    return seen


def test_harness_files_are_the_plugin_and_the_verdict_with_everything_they_import():
    known = sources.snapshot(REAL.root)
    code = _closure(["gates/pytest_plugin.py", "gates/verdict.py"], known)
    assert set(sources.HARNESS_FILES) == code | {"gates/catalog.toml"}
    # what the reports, the CLI and the GPU runner do cannot make evidence stale
    assert not {"gates/report.py", "gates/charts.py", "gates/cli.py", "gates/gpu.py"} & set(sources.HARNESS_FILES)


def test_imports_are_resolved_one_level_including_relative_and_function_scope():
    known = {"pkg/__init__.py": "", "pkg/a.py": "", "pkg/sub/__init__.py": "", "pkg/sub/b.py": "", "pkg/c.py": "",
             "top.py": ""}
    text = ("from . import a\nfrom .sub import b\nimport top\n\ndef f():\n    from pkg import c\n"
            "    import numpy\n")
    assert sources.imports_of("pkg/sub/x.py", text.replace("from . import a", "from .. import a")
                              .replace("from .sub import b", "from . import b"), known) == {
        "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py", "top.py", "pkg/c.py"}
    assert sources.package_inits("pkg/sub/b.py", known) == ["pkg/__init__.py", "pkg/sub/__init__.py"]


def test_gpu_records_depend_on_every_kernel_source_the_extension_is_built_from():
    from gpt_engine.ops import _ext
    known = sources.snapshot(REAL.root)
    globs = catalog.load(REAL.root).kernel_sources
    kernels = set(sources.expand(known, globs))
    built = {p.relative_to(REAL.root).as_posix() for p in _ext.sources()}
    assert built and built <= kernels
    assert _ext.CSRC == REAL.root / "csrc"               # the include path: every header in csrc/
    assert {p for p in known if p.startswith("csrc/")} == kernels
    files = sources.story_files(known, sources.Imports(REAL.root, known), {"tests/ops/test_layernorm.py"},
                                cuda=True, kernel_globs=globs)
    assert {"csrc/layernorm.cu", "csrc/attention_decode.cu", "csrc/common.cuh"} <= set(files)
    cpu = sources.story_files(known, sources.Imports(REAL.root, known), {"tests/ops/test_layernorm.py"},
                              cuda=False, kernel_globs=globs)
    assert not any(f.startswith("csrc/") for f in cpu)


@pytest.mark.slow
def test_a_kernel_story_depends_on_its_kernel_not_on_the_cli_reports_or_tokenizer(tmp_path):
    """The real LayerNorm CPU tests, run with the plugin: what GT-011's evidence depends on."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "OUT") and not k.startswith("GPT_ENGINE_")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "gates.pytest_plugin", "-q", "--evidence-dir", str(tmp_path),
                        "--story", "GT-011", "-m", "not cuda", "-k", "float32", "tests/ops/test_layernorm.py"],
                       cwd=REAL.root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [f] = tmp_path.glob("*.json")
    files = set(json.loads(f.read_text())["story_files"]["GT-011"])
    assert {"gpt_engine/ops/layernorm.py", "gpt_engine/ops/_common.py", "tests/ops/test_layernorm.py",
            "tests/ops/_util.py", "tests/tolerances.py", "tests/ops/conftest.py", "stories/GT-011.toml",
            "gates/verdict.py", "pyproject.toml"} <= files
    assert not {"gpt_engine/cli.py", "gpt_engine/tokenizer.py", "gates/report.py", "gates/cli.py",
                "gpt_engine/model.py", "gpt_engine/ops/attention_decode.py",
                "gpt_engine/testmodels.py"} & files      # a fixture module its tests never requested
    assert "tests/conftest.py" in files                     # every conftest can change every outcome

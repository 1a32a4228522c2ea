"""Where a run happened: code version and machine description, never a host name."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _git(root: Path, *args) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state(root: Path) -> dict:
    """Commit and dirty flag. GPT_ENGINE_GIT_COMMIT / GPT_ENGINE_GIT_DIRTY, when set, win: the
    GPU machine gets a copy of the working tree without .git. The verdict does not take the
    commit on trust: it must exist, be an ancestor of HEAD, and hold exactly the file hashes
    the run recorded (gates/audit.py), and the run's whole source tree must be the commit's.
    Untracked files that git does not ignore make the tree dirty: a new conftest.py or module
    changes what runs as surely as an edit. Where the named commit is this .git's HEAD, git
    answers the dirty question even so."""
    env_commit = os.environ.get("GPT_ENGINE_GIT_COMMIT")
    if env_commit:  # the caller knows better than whatever .git the copy may carry
        dirty_env = os.environ.get("GPT_ENGINE_GIT_DIRTY")
        dirty = None if dirty_env is None else dirty_env.lower() in ("1", "true", "yes")
        head = _git(root, "rev-parse", "HEAD")
        if head and head.strip() == env_commit:   # git can answer: it does, whatever the variable says
            status = _git(root, "status", "--porcelain", "--untracked-files=normal")
            dirty = bool(status and status.strip())
        return {"commit": env_commit, "dirty": dirty, "commit_source": "env"}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        status = _git(root, "status", "--porcelain", "--untracked-files=normal")
        return {"commit": commit.strip(), "dirty": bool(status and status.strip()), "commit_source": "git"}
    return {"commit": None, "dirty": None, "commit_source": None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_meta() -> tuple[str | None, str | None]:
    """torch version and the CUDA version it was built for, without importing torch (an
    import costs seconds on the CPU machine and the xdist controller never needs it)."""
    try:
        ver = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    cuda = None
    if "torch" in sys.modules:
        cuda = getattr(sys.modules["torch"].version, "cuda", None)
    else:
        spec = importlib.util.find_spec("torch")
        if spec and spec.submodule_search_locations:
            vfile = Path(list(spec.submodule_search_locations)[0]) / "version.py"
            try:
                m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", vfile.read_text(), re.M)
                cuda = m.group(1) if m else None
            except OSError:
                pass
    return ver, cuda


def gpu_info() -> dict:
    """GPU name and driver. Only asks torch when this machine has an NVIDIA driver."""
    info = {"gpu_name": None, "gpu_count": 0, "driver": None}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            rows = [l.split(",") for l in r.stdout.strip().splitlines() if "," in l]
            if rows:
                info.update(gpu_name=rows[0][0].strip(), driver=rows[0][1].strip(), gpu_count=len(rows))
        except (OSError, subprocess.SubprocessError):
            pass
    if smi or "torch" in sys.modules:
        try:
            import torch
            if torch.cuda.is_available():
                info["gpu_name"] = torch.cuda.get_device_name(torch.cuda.current_device())
                info["gpu_count"] = torch.cuda.device_count()
        except Exception:  # a broken CUDA install is described as "no GPU", not a crash
            pass
    return info


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def machine_class(gpu_name: str | None) -> str:
    return slug(gpu_name) if gpu_name else "cpu"


def describe(root: Path, git: dict | None = None) -> dict:
    """git: the state taken when the run started (the tree that was tested), else taken now."""
    torch_ver, cuda_ver = _torch_meta()
    d = {**(git or git_state(root)), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
         **gpu_info(), "cuda": cuda_ver, "torch": torch_ver,
         "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}
    d["machine_class"] = machine_class(d["gpu_name"])
    return d

"""Seed a new extension build from an earlier one whose sources differ in a few files.

A build of a changed csrc/ goes into a new directory (its name is the content hash of csrc,
gpt_engine.ops._ext.build_dir), so ninja starts from nothing: ~250 s on the H200 machine even
when one kernel file changed. This copies the closest earlier build into that directory and lets
ninja recompile only what differs:

  manifest DIR   write DIR/csrc.sha256: the key (flags, arch, torch and CUDA versions) and the
                 sha256 of every csrc file, for the build in DIR (call it after a build; it
                 also removes the seed's marker, DIR/.seeded)
  seed DIR       DIR has no build: take the earlier build (a sibling directory, or parts in
                 .extcache/ext-<hash>.tgz.part-*, their manifest read from inside them or from
                 .extcache/ext-<hash>.csrc.sha256 beside them) with the same key and the most csrc files of
                 identical bytes, copy it into DIR, then give every csrc file of identical bytes an
                 old time (2000-01-01) and every other csrc file the present time

Why it is safe: ninja rebuilds an object when a source or header it depends on (its depfile) is
newer than it, or when its command changed. Only files whose bytes equal the seed's get the older
time; every other file, headers included, is newer than every seed object, so each object that
depends on one is rebuilt, and the library relinked. Files outside csrc (torch's headers) are
covered by the key: a different torch or CUDA version is never a seed. Run from the repository
root with PYTHONPATH set as gpu_env.sh sets it.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from gpt_engine.ops import _ext

LIB = "gpt_engine_ops_ext.so"
MANIFEST = "csrc.sha256"
# the time given to sources of identical bytes: older than any object of any build (ninja compares
# a source with its own object, which may be older than the library by minutes)
OLD = 946684800  # 2000-01-01
SEEDED = ".seeded"  # in a seeded directory until its build finishes


def key() -> str:
    return hashlib.sha256(_ext.build_config()).hexdigest()


def digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(_ext.CSRC.iterdir()) if p.is_file()}


def write_manifest(d: pathlib.Path) -> None:
    if not (d / LIB).is_file():
        print(f"ext_seed: no built library in {d}; no manifest")
        return
    lines = [f"key {key()}"] + [f"{h} {n}" for n, h in digests().items()]
    (d / MANIFEST).write_text("\n".join(lines) + "\n")
    (d / SEEDED).unlink(missing_ok=True)  # built from this tree now


def read_manifest(text: str) -> tuple[str, dict[str, str]]:
    k, files = "", {}
    for line in text.splitlines():
        a, _, b = line.partition(" ")
        if a == "key":
            k = b
        elif b:
            files[b] = a
    return k, files


def manifest_in(parts: list[pathlib.Path]) -> str:
    """The manifest packed inside a set of parts ('' when they hold none: made before manifests)."""
    cat = subprocess.Popen(["cat", *map(str, parts)], stdout=subprocess.PIPE)
    r = subprocess.run(["tar", "-xzOf", "-", "--wildcards", f"*/{MANIFEST}"], stdin=cat.stdout,
                       capture_output=True, text=True)
    cat.wait()
    return r.stdout if r.returncode == 0 and cat.returncode == 0 else ""


def unpack(parts: list[pathlib.Path], into: pathlib.Path) -> pathlib.Path | None:
    """The build directory inside a set of parts, unpacked under `into`."""
    cat = subprocess.Popen(["cat", *map(str, parts)], stdout=subprocess.PIPE)
    ok = subprocess.run(["tar", "-C", str(into), "-xzf", "-"], stdin=cat.stdout).returncode == 0
    cat.wait()
    dirs = [p for p in into.iterdir() if (p / LIB).is_file()]
    return dirs[0] if ok and cat.returncode == 0 and len(dirs) == 1 else None


def seed(d: pathlib.Path) -> None:
    if (d / LIB).is_file():
        return
    want, have = key(), digests()

    def score(text: str) -> int:
        k, files = read_manifest(text)
        return -1 if k != want else sum(files.get(n) == h for n, h in have.items())

    cands = []  # (matching files, name, manifest text, source: a directory or a list of parts)
    d.parent.mkdir(parents=True, exist_ok=True)  # a cold machine has no build directory yet
    for s in d.parent.iterdir():
        if s != d and (s / LIB).is_file() and (s / MANIFEST).is_file():
            t = (s / MANIFEST).read_text()
            cands.append((score(t), s.name, t, s))
    ec = pathlib.Path(".extcache")
    for first in sorted(ec.glob("ext-*.tgz.part-aa")) if ec.is_dir() else []:
        h = first.name[len("ext-"):-len(".tgz.part-aa")]
        parts = sorted(ec.glob(f"ext-{h}.tgz.part-*"))
        if (d.parent / h / LIB).is_file():
            continue
        side = ec / f"ext-{h}.csrc.sha256"  # beside the parts, or (ext_cache.sh save) inside them
        t = side.read_text() if side.is_file() else manifest_in(parts)
        if t:
            cands.append((score(t), h, t, parts))
    cands = [c for c in cands if c[0] > 0]
    if not cands:
        print("ext_seed: no earlier build with this key; building from nothing")
        return
    _, name, text, src = max(cands, key=lambda c: c[0])
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".seed-", dir=d.parent))
    try:
        if isinstance(src, pathlib.Path):
            b = tmp / "b"
            shutil.copytree(src, b, symlinks=True)  # copy2: file times kept
        else:
            b = unpack(src, tmp)
            if b is None:
                print(f"ext_seed: the parts of {name} did not unpack; building from nothing")
                return
        (b / "lock").unlink(missing_ok=True)
        # this directory's manifest is written after its own build (parts made before manifests
        # existed have none inside: .extcache's beside them named the seed)
        (b / MANIFEST).unlink(missing_ok=True)
        _, files = read_manifest(text)
        now = time.time()
        same = []
        for p in sorted(_ext.CSRC.iterdir()):
            if p.is_file():
                if files.get(p.name) == have[p.name]:
                    os.utime(p, (OLD, OLD))
                    same.append(p.name)
                else:
                    os.utime(p, (now, now))
        # until the build finishes (write_manifest), ext_cache.sh must not re-time this tree's
        # newer sources against the seed's library: they are the ones to recompile
        (b / SEEDED).write_text(name + "\n")
        if d.exists():
            shutil.rmtree(d)
        os.rename(b, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diff = sorted(set(have) - set(same))
    print(f"ext_seed: seeded from {name}: {len(same)} csrc files the same, rebuilt: {' '.join(diff) or 'none'}")


if __name__ == "__main__":
    cmd, where = sys.argv[1], pathlib.Path(sys.argv[2])
    {"manifest": write_manifest, "seed": seed}[cmd](where)

"""Self-checking offline bundles: a directory tree packed, split into parts, with an installer.

For hosts without network (air-gapped clusters, our GPU test host) where one transfer carries a
limited size.  The bundle directory holds:
  part-000, part-001, ...   the xz-compressed tar of the tree, split at --max-part bytes
  SHA256SUMS                the sha256 of every part and of the whole archive
  FILES.sha256              the sha256 of every file inside, checked after unpacking
  install.sh                verifies and assembles the parts, unpacks, checks every file
Carry the parts over in as many transfers as needed into one staging directory on the host
(each `install.sh stage DIR` checks the parts it was given), then `install.sh install DIR TARGET`.
"""
from __future__ import annotations

import lzma
import os
import re
import subprocess
import tarfile
from pathlib import Path

from .errors import UserError
from .package_index import sha256_of

INSTALL_SH = r"""#!/usr/bin/env bash
# Offline bundle installer (made by tools/build.py). Usage:
#   install.sh stage STAGING            copy the parts next to this script into STAGING, checking each
#   install.sh install STAGING TARGET   check all parts, assemble, unpack into TARGET, check every file
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}; staging=${2:-}
[ -n "$cmd" ] && [ -n "$staging" ] || { echo "usage: install.sh stage STAGING | install STAGING TARGET" >&2; exit 2; }
mkdir -p "$staging"
cp "$here/SHA256SUMS" "$here/FILES.sha256" "$staging/"
for p in "$here"/part-*; do
  [ -e "$p" ] || continue
  [ "$p" -ef "$staging/$(basename "$p")" ] || cp "$p" "$staging/"
done
cd "$staging"
present=$(ls part-* 2>/dev/null | wc -l)
grep ' part-' SHA256SUMS | while read -r sum name; do
  name=${name#\*}
  [ -e "$name" ] || continue
  echo "$sum  $name" | sha256sum -c --quiet - || { echo "bad part $name" >&2; exit 1; }
done
total=$(grep -c ' part-' SHA256SUMS)
echo "staged $present of $total parts in $staging"
if [ "$cmd" = install ]; then
  target=${3:?install needs a TARGET directory}
  [ "$present" -eq "$total" ] || { echo "missing parts: have $present of $total" >&2; exit 1; }
  cat part-* > bundle.tar.xz
  grep ' bundle.tar.xz' SHA256SUMS | sha256sum -c --quiet -
  mkdir -p "$target"
  tar -xJf bundle.tar.xz -C "$target"
  rm bundle.tar.xz
  (cd "$target" && sha256sum -c --quiet "$staging/FILES.sha256")
  echo "installed and verified $(wc -l < FILES.sha256) files in $target"
  if [ -d "$target/deps" ] && ls "$target"/deps/*.whl >/dev/null 2>&1; then
    ${PY:-python3} -m pip install -q --no-index --no-deps --no-compile --target "$target/site-packages" "$target"/deps/*.whl
    echo "installed $(ls "$target"/deps/*.whl | wc -l) dependency wheels into $target/site-packages"
  fi
fi
"""


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", text.strip(), re.I)
    if not m:
        raise UserError(f"--max-part {text!r}: give a size like 60MB")
    unit = (m.group(2) or "").upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}[unit]
    return int(m.group(1)) * mult


def write_bundle(tree: Path, out: Path, max_part: int) -> list[Path]:
    """Pack tree into out/ as verified parts of at most max_part bytes; returns the parts."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    (out / "FILES.sha256").write_text("".join(f"{sha256_of(p)}  ./{p.relative_to(tree)}\n" for p in files))
    archive = out / "bundle.tar.xz"
    with lzma.open(archive, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tf:
        for p in files:
            info = tf.gettarinfo(str(p), arcname=f"./{p.relative_to(tree)}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tf.addfile(info, f)
    parts = []
    with open(archive, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(max_part), b"")):
            part = out / f"part-{i:03d}"
            part.write_bytes(block)
            parts.append(part)
    sums = [f"{sha256_of(p)}  {p.name}\n" for p in parts] + [f"{sha256_of(archive)}  bundle.tar.xz\n"]
    (out / "SHA256SUMS").write_text("".join(sums))
    archive.unlink()
    (out / "install.sh").write_text(INSTALL_SH)
    os.chmod(out / "install.sh", 0o755)
    return parts


def download_wheels(requirements: Path, dest: Path, python_version="3.12"):
    """Wheels for another machine (x86-64 manylinux, the given CPython), without their deps."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + \
        ["manylinux2014_x86_64", "manylinux1_x86_64"]
    cmd = ["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest),
           "-r", str(requirements)]
    for p in platforms:
        cmd += ["--platform", p]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError("downloading the dependency wheels failed: "
                        + (p.stderr.strip().splitlines() or ["pip failed"])[-1])

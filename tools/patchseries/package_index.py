"""The Python package index that pip is configured with: file listings, downloads, hashes.

We ask pip which index it uses (PIP_INDEX_URL, pip.conf, else pip's own default) rather
than naming a host, and we read the index's JSON simple API (PEP 691) directly: `pip
download` of an sdist would run the package's build backend, which for vLLM needs torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from .errors import UserError

_JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str
    size: int | None
    upload_time: str | None


def configured_index_url() -> str:
    """The index pip would use: environment, then pip's configuration, then pip's default."""
    url = os.environ.get("PIP_INDEX_URL")
    if url:
        return url.rstrip("/")
    p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and not key.strip().endswith("extra-index-url"):
            return value.strip().strip("'\"").rstrip("/")
    from pip._internal.models.index import PyPI  # pip's own default, so no host is written here
    return PyPI.simple_url.rstrip("/")


def list_files(project: str, index_url: str | None = None) -> list[IndexFile]:
    index_url = index_url or configured_index_url()
    url = f"{index_url}/{canonicalize_name(project)}/"
    req = urllib.request.Request(url, headers={"Accept": _JSON_ACCEPT})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as e:
        raise UserError(f"package index {index_url}: '{project}' not found ({e.code})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise UserError(f"package index {index_url} unreachable: {getattr(e, 'reason', e)}") from None
    except json.JSONDecodeError:
        raise UserError(f"package index {index_url} does not speak the JSON simple API (PEP 691)") from None
    files = []
    for f in data.get("files", []):
        sha = (f.get("hashes") or {}).get("sha256")
        if not sha:
            continue
        files.append(IndexFile(filename=f["filename"], url=urllib.parse.urljoin(url, f["url"]),
                               sha256=sha, size=f.get("size"), upload_time=f.get("upload-time")))
    return files


def find_release_file(project: str, version: str, kind: str, index_url: str | None = None,
                      sha256: str | None = None) -> IndexFile:
    """The sdist, or the (pure-Python or manylinux x86-64) wheel, of one release.

    With sha256 (the pin in series.yaml) it is the file with that hash, or an error: a release
    can have several wheels, and a file replaced on the index must not slip in unnoticed.
    """
    candidates = []
    for f in list_files(project, index_url):
        try:
            if kind == "sdist" and f.filename.endswith(".tar.gz"):
                _, v = parse_sdist_filename(f.filename)
            elif kind == "wheel" and f.filename.endswith(".whl"):
                _, v, _, tags = parse_wheel_filename(f.filename)
                if not any(t.platform == "any" or "x86_64" in t.platform for t in tags):
                    continue
            else:
                continue
        except ValueError:
            continue
        if str(v) == version:
            candidates.append(f)
    if not candidates:
        raise UserError(f"no {kind} of {project} {version} on the package index")
    if sha256:
        pinned = [f for f in candidates if f.sha256 == sha256]
        if not pinned:
            raise UserError(f"no {kind} of {project} {version} on the index has the pinned sha256 "
                            f"{sha256} (it has: {', '.join(f.filename for f in candidates)})")
        return pinned[0]
    return sorted(candidates, key=lambda f: f.filename)[0]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(file: IndexFile, dest_dir: Path, progress=True) -> Path:
    """Download once into dest_dir and verify the index's sha256; reuse a verified copy."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / file.filename
    if dest.exists():
        if sha256_of(dest) == file.sha256:
            return dest
        dest.unlink()  # a partial or corrupt earlier download
    part = dest.with_suffix(dest.suffix + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(file.url, timeout=120) as resp, open(part, "wb") as out:
            total = file.size or int(resp.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress and time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    _progress(file.filename, done, total)
            if progress:
                _progress(file.filename, done, total, end=True)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"download of {file.filename} failed: {getattr(e, 'reason', e)}") from None
    if h.hexdigest() != file.sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"{file.filename}: sha256 {h.hexdigest()} does not match the index's {file.sha256}")
    shutil.move(part, dest)
    return dest


def verify(path: Path, expected_sha256: str):
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise UserError(f"{path.name}: sha256 {actual} does not match the index's {expected_sha256}")


def _progress(name, done, total, end=False):
    mb = done / 1e6
    if total:
        width = 30
        filled = int(width * done / total)
        line = f"  {name} [{'#' * filled}{'.' * (width - filled)}] {mb:.1f}/{total / 1e6:.1f} MB"
    else:
        line = f"  {name} {mb:.1f} MB"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if end else ""))
    elif end:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()

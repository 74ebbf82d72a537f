"""Patching an installed package (site-packages) with a backup, and an exact undo.

Only the package's own files are patched (a patch's changes to upstream's tests/ or build files
have nothing to land on in site-packages).  Every touched file is copied aside first and listed
with its sha256 before and after, so undo restores it byte for byte and refuses when a file was
changed since by something else.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path

from packaging.utils import canonicalize_name

from . import git, patch_file
from .engine import ALREADY, CLEAN, CONFLICT, NOT_REACHED, OFFSET, PatchOutcome, SeriesItem
from .errors import UserError
from .series import Upstream

BACKUP_DIR = ".gemma4-series-backup"
ROLLED_BACK = "rolled back"   # would apply, but a later patch did not: installs are all or nothing


def site_packages_of(python: str) -> Path:
    try:
        p = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise UserError(f"cannot run {python}: {e.strerror}") from None
    if p.returncode != 0:
        raise UserError(f"{python} could not say where its site-packages is")
    return Path(p.stdout.strip())


def installed_version(site_packages: Path, dist_name: str) -> str | None:
    want = canonicalize_name(dist_name)
    for dist in importlib.metadata.distributions(path=[str(site_packages)]):
        if canonicalize_name(dist.metadata["Name"] or "") == want:
            return dist.version
    return None


def pth_dirs(site_packages: Path) -> list[Path]:
    """Existing folders that the .pth files of a site-packages directory add to sys.path (their
    plain path lines; `import` lines are code and are not run).  PYTHONPATH entries get none of
    this, so a site used through PYTHONPATH needs them named."""
    site = Path(site_packages)
    out: list[Path] = []
    for pth in sorted(site.glob("*.pth")):
        for line in pth.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            d = (site / line).resolve()
            if d.is_dir() and d not in out:
                out.append(d)
    return out


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


class InstalledPatcher:
    def __init__(self, site_packages: Path, upstream: Upstream):
        self.site = Path(site_packages)
        self.upstream = upstream
        self.backup = self.site / BACKUP_DIR / upstream.package
        self.manifest_path = self.backup / "manifest.json"
        if not (self.site / upstream.package).is_dir():
            raise UserError(f"no '{upstream.package}' package in {self.site}")

    # git path "python/sglang/x.py" -> "sglang/x.py"; -p strips "a/" plus the layout prefix
    @property
    def _strip(self) -> int:
        return 1 + self.upstream.layout.prefix.count("/")

    @property
    def _include(self) -> list[str]:
        return [f"{self.upstream.package}/*"]

    def _package_paths(self, item: SeriesItem) -> tuple[list[str], list[str]]:
        inside, outside = [], []
        for path in patch_file.touched_paths(item.data):
            rel = self.upstream.layout.installed_path(path)
            (inside if rel and rel.startswith(self.upstream.package + "/") else outside).append(rel or path)
        return inside, outside

    def manifest(self) -> dict | None:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else None

    def apply(self, items: list[SeriesItem], check_only=False) -> list[PatchOutcome]:
        done = self.manifest()
        done_files = set(done["patches"]) if done else set()
        todo = [i for i in items if i.file not in done_files]
        outcomes = {i.file: PatchOutcome(i.name, i.file, ALREADY, "recorded in the backup manifest",
                                         files=self._package_paths(i)[0])
                    for i in items if i.file in done_files}
        if todo and done:
            raise UserError(f"{self.site} already carries part of the series: "
                            "run --unapply first, then apply the selection you want")
        if not todo:
            return [outcomes[i.file] for i in items]
        touched = sorted({p for i in todo for p in self._package_paths(i)[0]})
        staging = self.backup.parent / (self.upstream.package + ".staging")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)   # also when every touched file is new
        # Work on a copy of the touched files; the real files change only once all patches went in.
        for rel in touched:
            src = self.site / rel
            if src.exists():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, staging / rel)
        try:
            failed = False
            for item in todo:
                inside, outside = self._package_paths(item)
                if failed:
                    outcomes[item.file] = PatchOutcome(item.name, item.file, NOT_REACHED, files=inside)
                    continue
                r = git.apply_to_directory(staging, item.data, self._strip, self._include)
                o = PatchOutcome(item.name, item.file, CLEAN, files=inside)
                if outside:
                    o.detail = "not in the installed package, left out: " + ", ".join(outside)
                if r.returncode != 0:
                    rev = git.apply_to_directory(staging, item.data, self._strip, self._include,
                                                 check_only=True, reverse=True)
                    if rev.returncode == 0:
                        o.outcome, o.detail = ALREADY, "the change is already in the installed files"
                    else:
                        o.outcome, failed = CONFLICT, True
                        o.detail = next((ln for ln in r.stderr.splitlines() if ln.startswith("error")),
                                        "does not apply")
                        o.conflicts = [{"file": f, "hunks": [f"at line {n}"]} for f, n in
                                       re.findall(r"error: patch failed: (.+):(\d+)", r.stderr)]
                elif "offset" in r.stderr:
                    o.outcome = OFFSET
                    o.detail = "; ".join(re.findall(r"Hunk #\d+ succeeded at \d+ \(offset -?\d+ lines?\)",
                                                    r.stderr))
                outcomes[item.file] = o
            if failed and not check_only:
                for item in todo:
                    if outcomes[item.file].outcome in (CLEAN, OFFSET):
                        outcomes[item.file].outcome = ROLLED_BACK
            if failed or check_only:
                return [outcomes[i.file] for i in items]
            self._commit(todo, touched, staging, done_files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [outcomes[i.file] for i in items]

    def _commit(self, todo, touched, staging, done_files):
        files = []
        (self.backup / "files").mkdir(parents=True, exist_ok=True)
        for rel in touched:
            live = self.site / rel
            entry = {"path": rel, "before": _sha(live), "after": _sha(staging / rel)}
            if live.exists():
                (self.backup / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(live, self.backup / "files" / rel)
            files.append(entry)
        manifest = {"upstream": self.upstream.name,
                    "version": installed_version(self.site, self.upstream.artifact.name),
                    "patches": sorted(done_files) + [i.file for i in todo], "files": files}
        self.manifest_path.write_text(json.dumps(manifest, indent=1))
        for entry in files:
            live, new = self.site / entry["path"], staging / entry["path"]
            if entry["after"] is None:
                live.unlink(missing_ok=True)
            else:
                live.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(new, live)

    def unapply(self, force=False) -> int:
        manifest = self.manifest()
        if manifest is None:
            raise UserError(f"no series backup in {self.site}: nothing to undo")
        changed = [e["path"] for e in manifest["files"] if _sha(self.site / e["path"]) != e["after"]]
        if changed and not force:
            raise UserError(f"changed since the series was applied: {', '.join(changed)} — "
                            "undo would overwrite that; rerun with --force to restore anyway")
        for e in manifest["files"]:
            live = self.site / e["path"]
            if e["before"] is None:
                live.unlink(missing_ok=True)
            else:
                shutil.copy2(self.backup / "files" / e["path"], live)
            if _sha(live) != e["before"]:
                raise UserError(f"{e['path']}: restored file does not match its recorded sha256")
        shutil.rmtree(self.backup)
        return len(manifest["files"])

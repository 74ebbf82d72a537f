"""Upstream releases from the package index, materialized as git history in a local cache.

Layout of the cache (default ~/.cache/gemma4-series, or $GEMMA4_SERIES_CACHE):
  downloads/<artifact file>      verified against the index's sha256, downloaded once
  store/<upstream>.git           bare repository: one commit per imported release, tagged v<version>;
                                 each release's parent is the newest imported release below it, so
                                 `git am -3` finds preimages and renames show up as renames
  trees/<upstream>/              the default work tree that tools/apply.py patches
  envs/                          per-upstream Python environments for regression tests
"""
from __future__ import annotations

import fcntl
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from packaging.version import Version

from . import git, package_index
from .errors import UserError
from .series import Upstream


def default_cache_root() -> Path:
    env = os.environ.get("GEMMA4_SERIES_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "gemma4-series"


def release_tag(version: str) -> str:
    return f"v{version}"


class UpstreamCache:
    def __init__(self, root: Path | None = None, index_url: str | None = None, progress=True):
        self.root = Path(root) if root else default_cache_root()
        self.index_url = index_url
        self.progress = progress

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def store(self, upstream: Upstream) -> Path:
        return self.root / "store" / f"{upstream.name}.git"

    def default_tree(self, upstream: Upstream) -> Path:
        return self.root / "trees" / upstream.name

    @contextmanager
    def _locked(self):
        """One process at a time changes the cache; others wait."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # --- releases ---------------------------------------------------------------------
    def imported_versions(self, upstream: Upstream) -> dict[str, str]:
        store = self.store(upstream)
        if not store.exists():
            return {}
        refs = git.list_refs(store, "refs/tags/v*")
        return {name[len("refs/tags/v"):]: sha for name, sha in refs.items()}

    def release_commit(self, upstream: Upstream, version: str | None = None) -> str:
        """The commit holding one release's source in git layout; imports it when missing."""
        version = version or upstream.artifact.version
        expected_sha256 = upstream.artifact.sha256 if version == upstream.artifact.version else None
        with self._locked():
            store = self.store(upstream)
            if not store.exists():
                git.init(store, bare=True)
            have = self.imported_versions(upstream)
            if version in have:
                return have[version]
            file = package_index.find_release_file(upstream.artifact.name, version,
                                                   upstream.artifact.kind, self.index_url,
                                                   sha256=expected_sha256)
            self._say(f"fetching {file.filename} from the package index")
            path = package_index.download(file, self.downloads, progress=self.progress)
            package_index.verify(path, file.sha256)
            older = [v for v in have if Version(v) < Version(version)]
            parent = have[max(older, key=Version)] if older else None
            with tempfile.TemporaryDirectory(prefix="patchseries-import-") as tmp:
                self._say(f"importing {upstream.name} {version} into {store}")
                extract(path, Path(tmp), upstream.layout.git_path)
                commit = git.commit_directory(
                    store, tmp, f"{upstream.name} {version} from {file.filename}\n\n"
                                f"sha256: {file.sha256}\n", parent=parent,
                    date=file.upload_time or "2000-01-01T00:00:00Z")
            git.tag(store, release_tag(version), commit, force=True)
            return commit

    def release_sha256(self, upstream: Upstream, version: str) -> str | None:
        """The artifact hash recorded in the release's import commit."""
        message = git.commit_message(self.store(upstream), self.release_commit(upstream, version))
        for line in message.splitlines():
            if line.startswith("sha256: "):
                return line.split()[1]
        return None

    def tree_at(self, upstream: Upstream, dest: Path, version: str | None = None) -> Path:
        """A new independent clone at a release (objects borrowed from the store)."""
        version = version or upstream.artifact.version
        self.release_commit(upstream, version)
        git.clone_shared(self.store(upstream), dest, release_tag(version))
        return dest

    def ensure_default_tree(self, upstream: Upstream) -> Path:
        tree = self.default_tree(upstream)
        commit = self.release_commit(upstream)
        if not (tree / ".git").exists():
            if tree.exists():
                shutil.rmtree(tree)
            tree.parent.mkdir(parents=True, exist_ok=True)
            self._say(f"checking out {upstream.name} {upstream.artifact.version} into {tree}")
            git.clone_shared(self.store(upstream), tree, commit)
        return tree

    def _say(self, msg):
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def extract(archive: Path, dest: Path, map_path) -> int:
    """Unpack an sdist or wheel into dest, each path mapped to its git path (None: skipped)."""
    count = 0
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir() or not _safe_member(info.filename):
                    continue
                target = map_path(info.filename)
                if target is None:
                    continue
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(info))
                mode = (info.external_attr >> 16) & 0o777
                if mode & 0o111:
                    out.chmod(0o755)
                count += 1
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf:
                if not _safe_member(member.name) or not (member.isfile() or member.issym()):
                    continue
                target = map_path(member.name)
                if target is None:
                    continue
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    link = PurePosixPath(member.name).parent / member.linkname
                    if member.linkname.startswith("/") or ".." in PurePosixPath(
                            os.path.normpath(str(link))).parts:
                        continue  # a link out of the tree is not source
                    os.symlink(member.linkname, out)
                else:
                    with tf.extractfile(member) as src, open(out, "wb") as f:
                        shutil.copyfileobj(src, f)
                    if member.mode & stat.S_IXUSR:
                        out.chmod(0o755)
                count += 1
    else:
        raise UserError(f"{archive.name}: unknown artifact type (expected .tar.gz or .whl)")
    return count

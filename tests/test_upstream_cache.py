"""Upstream releases from a package index, materialized as successive git commits.

A small index is served on loopback (the same JSON simple API pip uses) with hand-made sdists and
wheels; the last tests use the real pinned artifacts from the configured index.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, numbered, run_tool, sh
from patchseries import git, series as series_mod
from patchseries.errors import UserError
from patchseries.upstream_cache import UpstreamCache


def sdist_bytes(version: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for rel, text in {**files, "PKG-INFO": "Name: toy\n", "toy.egg-info/SOURCES.txt": "x\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"toy-{version}/{rel}")
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wheel_bytes(version: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, text in {**files, f"toy-{version}.dist-info/METADATA": "Name: toy\n"}.items():
            zf.writestr(rel, text)
    return buf.getvalue()


class LoopbackIndex:
    """A PEP 691 JSON index on 127.0.0.1 serving files we give it (and, on request, a wrong hash)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.lie_about: set[str] = set()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.startswith("/simple/toy/"):
                    entries = [{"filename": n, "url": f"/files/{n}", "size": len(d),
                                "upload-time": "2026-01-01T00:00:00Z",
                                "hashes": {"sha256": "0" * 64 if n in index.lie_about
                                           else hashlib.sha256(d).hexdigest()}}
                               for n, d in index.files.items()]
                    body = json.dumps({"name": "toy", "files": entries}).encode()
                    ctype = "application/vnd.pypi.simple.v1+json"
                elif self.path.startswith("/files/") and self.path[7:] in index.files:
                    body, ctype = index.files[self.path[7:]], "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def index():
    idx = LoopbackIndex()
    yield idx
    idx.close()


def toy_series(tmp_path, kind="sdist", version="1.0", prefix="", strip=1) -> series_mod.Series:
    exclude = '[PKG-INFO, "*.egg-info"]' if kind == "sdist" else '["*.dist-info"]'
    path = tmp_path / "series.yaml"
    path.write_text(f"""schema: 1
upstreams:
  toy:
    git: https://example.invalid/toy.git
    ref: v{version}
    commit: null
    package: toy
    artifact: {{name: toy, version: "{version}", kind: {kind}}}
    layout: {{strip: {strip}, prefix: "{prefix}", exclude: {exclude}}}
patches: []
""")
    return series_mod.load(path)


def test_sdist_is_imported_in_git_layout_and_reused(index, tmp_path):
    index.files["toy-1.0.tar.gz"] = sdist_bytes("1.0", {"toy/__init__.py": "", "tests/t.py": "t\n"})
    up = toy_series(tmp_path).upstream("toy")
    cache = UpstreamCache(tmp_path / "cache", index_url=index.url, progress=False)

    commit = cache.release_commit(up)
    tree = cache.tree_at(up, tmp_path / "tree")

    files = sh(tree, "ls-files").stdout.split()
    assert files == ["tests/t.py", "toy/__init__.py"]     # top dir stripped, PKG-INFO/egg-info dropped
    assert git.head(tree) == commit
    assert sh(tree, "tag", "--points-at", "HEAD").stdout.strip() == "v1.0"
    index.files.clear()                                   # the second time needs no index at all
    assert UpstreamCache(tmp_path / "cache", index_url=index.url).release_commit(up) == commit


def test_wheel_paths_get_the_git_prefix(index, tmp_path):
    index.files["toy-1.0-py3-none-any.whl"] = wheel_bytes("1.0", {"toy/__init__.py": "", "toy/m.py": "m\n"})
    up = toy_series(tmp_path, kind="wheel", prefix="python/", strip=0).upstream("toy")
    tree = UpstreamCache(tmp_path / "cache", index_url=index.url, progress=False) \
        .tree_at(up, tmp_path / "tree")
    assert sh(tree, "ls-files").stdout.split() == ["python/toy/__init__.py", "python/toy/m.py"]


def test_successive_releases_are_successive_commits_and_renames_show(index, tmp_path):
    body = numbered(50)
    index.files["toy-1.0.tar.gz"] = sdist_bytes("1.0", {"toy/__init__.py": "", "toy/model.py": body})
    index.files["toy-1.1.tar.gz"] = sdist_bytes("1.1", {"toy/__init__.py": "", "toy/modeling.py": body})
    up = toy_series(tmp_path).upstream("toy")
    cache = UpstreamCache(tmp_path / "cache", index_url=index.url, progress=False)

    old = cache.release_commit(up, "1.0")
    new = cache.release_commit(up, "1.1")

    store = cache.store(up)
    assert sh(store, "rev-parse", f"{new}^").stdout.strip() == old
    renames = sh(store, "diff", "--find-renames", "--name-status", old, new).stdout
    assert renames.startswith("R100\ttoy/model.py\ttoy/modeling.py")


def test_same_release_gives_the_same_commit_id_on_every_machine(index, tmp_path):
    index.files["toy-1.0.tar.gz"] = sdist_bytes("1.0", {"toy/__init__.py": ""})
    up = toy_series(tmp_path).upstream("toy")
    a = UpstreamCache(tmp_path / "a", index_url=index.url, progress=False).release_commit(up)
    b = UpstreamCache(tmp_path / "b", index_url=index.url, progress=False).release_commit(up)
    assert a == b


def test_artifact_whose_hash_does_not_match_is_refused_and_not_kept(index, tmp_path):
    index.files["toy-1.0.tar.gz"] = sdist_bytes("1.0", {"toy/__init__.py": ""})
    index.lie_about.add("toy-1.0.tar.gz")
    toy_series(tmp_path)

    r = run_tool("apply", "--series", tmp_path / "series.yaml", "--cache", tmp_path / "cache",
                 env={"PIP_INDEX_URL": index.url})

    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors == r.stderr.strip().splitlines()[-1:]   # after the progress
    assert errors[0].startswith("error: toy-1.0.tar.gz: sha256 ")
    assert "does not match the index's 0000" in errors[0]
    assert not list((tmp_path / "cache" / "downloads").glob("toy-1.0*"))
    assert not (tmp_path / "cache" / "trees").exists()


def test_pinned_sha256_chooses_the_file_and_refuses_a_replaced_one(index, tmp_path):
    index.files["toy-1.0.tar.gz"] = sdist_bytes("1.0", {"toy/__init__.py": ""})
    toy_series(tmp_path)
    path = tmp_path / "series.yaml"
    path.write_text(path.read_text().replace('kind: sdist}', 'kind: sdist, sha256: ' + "ab" * 32 + '}'))
    up = series_mod.load(path).upstream("toy")
    with pytest.raises(UserError, match="has the pinned sha256"):
        UpstreamCache(tmp_path / "cache", index_url=index.url, progress=False).release_commit(up)


# --- the real pinned artifacts, from the configured package index (cached between runs) ----------

@pytest.mark.parametrize("upstream", ["vllm", "sglang"])
def test_real_pin_materializes_applies_a_patch_and_exports_it_identically(upstream, tmp_path):
    """Materialize the real pinned release, apply a patch made against it, export, check."""
    real = series_mod.load(ROOT / "series.yaml")
    up = real.upstream(upstream)
    cache = UpstreamCache(progress=False)
    maker = cache.tree_at(up, tmp_path / "maker")
    init = maker / up.layout.prefix / up.package / "__init__.py"
    assert init.exists()
    init.write_text(init.read_text() + "\n# touched by the patch-series test\n")
    sh(maker, "commit", "--quiet", "--all", "-m", f"test: touch {upstream}/__init__.py")
    project = tmp_path / "project"
    (project / "patches" / upstream).mkdir(parents=True)
    patch = project / "patches" / upstream / "touch.patch"
    patch.write_bytes(git.format_patch(maker, "HEAD"))
    text = (ROOT / "series.yaml").read_text()
    text = text[: text.index("\npatches:")] + f"""
patches:
  - name: touch
    upstream: {upstream}
    file: {upstream}/touch.patch
    summary: a test patch
    why: exercises the real pinned tree
    status: carried
"""
    (project / "series.yaml").write_text(text)
    tree = cache.tree_at(up, tmp_path / "tree")

    applied = run_tool("apply", "--series", project / "series.yaml", "--checkout", tree, "--json")
    check = run_tool("export", "--series", project / "series.yaml", "--checkout", tree, "--check")

    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["results"][0]["outcomes"][0]["outcome"] == "applied"
    assert json.loads(applied.stdout)["results"][0]["note"].startswith(f"at the pinned release {up.ref}")
    assert check.returncode == 0, check.stdout + check.stderr
    assert Path(tree / up.layout.prefix / up.package / "__init__.py").read_text().endswith(
        "# touched by the patch-series test\n")

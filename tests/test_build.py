"""tools/build.py: the pinned wheel with the series laid over it, verified; offline bundles in parts."""
from __future__ import annotations

import json
import shutil
import subprocess

from conftest import run_tool
from test_upstream_cache import LoopbackIndex, wheel_bytes  # noqa: F401  (fixture helpers)
import pytest

MODEL = "".join(f"x{i} = {i}\n" for i in range(40))


@pytest.fixture
def wheel_project(tmp_path):
    """A toy upstream published as a wheel (with a compiled-looking file) and a one-patch series."""
    index = LoopbackIndex()
    files = {"toy/__init__.py": "", "toy/model.py": MODEL, "toy/_C.abi3.so": "\x7fELF pretend",
             "toy/fa2/_fa2_C.abi3.so": "\x7fELF other gpus"}
    data = wheel_bytes("1.0", files)
    index.files["toy-1.0-py3-none-any.whl"] = data
    root = tmp_path / "project"
    (root / "patches/toy").mkdir(parents=True)
    (root / "series.yaml").write_text("""schema: 1
upstreams:
  toy:
    git: https://example.invalid/toy.git
    ref: v1.0
    commit: null
    package: toy
    artifact: {name: toy, version: "1.0", kind: wheel}
    layout: {strip: 0, prefix: "python/", exclude: ["*.dist-info"]}
patches:
  - name: faster
    upstream: toy
    file: toy/faster.patch
    summary: s
    why: w
    status: carried
""")
    # the patch, made against the wheel's source in git layout
    from patchseries.upstream_cache import UpstreamCache
    from patchseries import git, series as series_mod
    up = series_mod.load(root / "series.yaml").upstream("toy")
    cache = UpstreamCache(tmp_path / "cache", index_url=index.url, progress=False)
    maker = cache.tree_at(up, tmp_path / "maker")
    (maker / "python/toy/model.py").write_text(MODEL.replace("x7 = 7\n", "x7 = 'fast'\n"))
    (maker / "python/toy/kernel.py").write_text("def fused():\n    return 1\n")
    (maker / "tests").mkdir()
    (maker / "tests/test_kernel.py").write_text("def test(): pass\n")
    git.run(maker, "add", "-A")
    git.run(maker, "commit", "-qm", "faster", env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x"})
    (root / "patches/toy/faster.patch").write_bytes(git.format_patch(maker, "HEAD"))
    yield root, tmp_path / "cache", index
    index.close()


def build(root, cache, index, *args):
    return run_tool("build", "toy", "--series", root / "series.yaml", "--cache", cache, "--json", *args,
                    env={"PIP_INDEX_URL": index.url})


def test_wheel_with_series_overlaid_is_verified_against_the_patched_tree(wheel_project, tmp_path):
    root, cache, index = wheel_project
    target = tmp_path / "site"

    r = build(root, cache, index, "--target", target, "--drop", "toy/fa2/*")

    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["series_files"] == ["toy/kernel.py", "toy/model.py"]   # tests/ is not in a wheel
    assert out["series_files_differing"] == [] and out["other_py_differing"] == []
    assert out["dropped_files"] == ["toy/fa2/_fa2_C.abi3.so"]
    assert "x7 = 'fast'" in (target / "toy/model.py").read_text()
    assert (target / "toy/_C.abi3.so").read_bytes() == b"\x7fELF pretend"
    assert (target / "toy-1.0.dist-info/METADATA").exists()


def test_unpatched_build_is_the_release_as_is_checked_against_the_unpatched_tree(wheel_project, tmp_path):
    """The unpatched side of the GPU tier (tools/regress.py --gpu --site-packages)."""
    root, cache, index = wheel_project
    target = tmp_path / "site"

    r = build(root, cache, index, "--unpatched", "--target", target)

    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["series_files"] == [] and out["other_py_differing"] == []
    assert (target / "toy/model.py").read_text() == MODEL
    assert not (target / "toy/kernel.py").exists()


def test_bundle_parts_carried_in_several_transfers_install_and_verify(wheel_project, tmp_path):
    root, cache, index = wheel_project
    out_dir = tmp_path / "bundle"
    r = build(root, cache, index, "--target", tmp_path / "site", "--bundle", out_dir, "--max-part", "300")
    assert r.returncode == 0, r.stderr
    parts = sorted(out_dir.glob("part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 300 for p in parts)

    staging, target = tmp_path / "host/staging", tmp_path / "host/patched"
    for i, part in enumerate(parts):            # one transfer per part, as to the GPU host
        carry = tmp_path / f"transfer{i}"
        carry.mkdir()
        for name in ("install.sh", "SHA256SUMS", "FILES.sha256"):
            shutil.copy(out_dir / name, carry)
        shutil.copy(part, carry)
        subprocess.run(["bash", str(carry / "install.sh"), "stage", str(staging)], check=True,
                       capture_output=True)
    done = subprocess.run(["bash", str(out_dir / "install.sh"), "install", str(staging), str(target)],
                          capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert "installed and verified" in done.stdout
    assert "x7 = 'fast'" in (target / "site-packages/toy/model.py").read_text()


def test_a_corrupted_part_is_refused(wheel_project, tmp_path):
    root, cache, index = wheel_project
    out_dir = tmp_path / "bundle"
    assert build(root, cache, index, "--target", tmp_path / "site", "--bundle", out_dir,
                 "--max-part", "300").returncode == 0
    part = sorted(out_dir.glob("part-*"))[0]
    part.write_bytes(b"X" + part.read_bytes()[1:])

    r = subprocess.run(["bash", str(out_dir / "install.sh"), "install", str(tmp_path / "st"),
                        str(tmp_path / "t")], capture_output=True, text=True)

    assert r.returncode != 0 and "bad part part-000" in r.stderr
    assert not (tmp_path / "t").exists()

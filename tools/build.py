#!/usr/bin/env python3
"""Build a patched upstream for a GPU host: the pinned wheel with the series laid over it.

The upstream's wheel (compiled kernels included) is unpacked into a target directory in
site-packages layout, the files the series changes are laid over it from the patched tree, and
the result is verified: every file the series touches equals the patched tree, and every other
Python file of the package is compared with the tree too (differences are listed: they mean the
wheel and the source the patches were tested on disagree).

For hosts without network, --bundle writes a self-checking offline bundle (xz tar in parts of at
most --max-part, sha256 sums, an install script; dependency wheels from --deps go along):
  1. carry each part over (any number of transfers) and run `bundle/install.sh stage /tmp/stage`
  2. once all parts are there: `bundle/install.sh install /tmp/stage /opt/patched`
     then PYTHONPATH=/opt/patched/site-packages (dependency wheels are installed there too)

  tools/build.py sglang --target /tmp/sglang-site
  tools/build.py sglang --unpatched --deps tests/regression/sglang/gpu-host-deps.txt --bundle .stage/sglang
  tools/build.py vllm --drop 'vllm/vllm_flash_attn/_vllm_fa2_C*' --drop 'vllm/_moe_C*' \\
      --deps shared/gpu/vllm-0.21.0-offline-deps.txt --bundle /tmp/vllm-bundle --max-part 60MB

exit codes: 0 built and verified · 1 verification found differences · 2 bad input · 3 internal error
"""
from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchseries import bundle, checkout, engine, package_index, patch_file, report  # noqa: E402
from patchseries import series as series_mod  # noqa: E402
from patchseries.errors import EXIT_OK, EXIT_STOPPED, UserError, main_wrapper  # noqa: E402
from patchseries.upstream_cache import UpstreamCache  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tools/build.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("upstream", help="vllm or sglang")
    ap.add_argument("--checkout", metavar="PATH", help="take the patched files from this clone "
                    "(series applied) instead of applying the series to the pin")
    ap.add_argument("--unpatched", action="store_true", help="the pinned wheel as released, nothing laid "
                    "over it (checked against the unpatched tree): the unpatched side of "
                    "tools/regress.py --gpu --site-packages")
    ap.add_argument("--target", metavar="DIR", help="site-packages directory to build "
                    "(default <cache>/build/<upstream>-<version>/site-packages)")
    ap.add_argument("--drop", metavar="GLOB", action="append", default=[],
                    help="leave out wheel files matching this path glob (e.g. kernels for other GPUs)")
    ap.add_argument("--bundle", metavar="DIR", help="also write an offline bundle here")
    ap.add_argument("--max-part", default="60MB", help="largest bundle part (default 60MB)")
    ap.add_argument("--deps", metavar="FILE", help="requirements file of dependency wheels to bundle (cp312)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--series", default=str(series_mod.find_series_file()), help=argparse.SUPPRESS)
    ap.add_argument("--cache", metavar="DIR", help="cache directory (default ~/.cache/gemma4-series)")
    args = ap.parse_args(argv)
    series = series_mod.load(args.series)
    up = series.upstream(args.upstream)
    cache = UpstreamCache(args.cache, progress=not args.json)
    version = up.artifact.version
    max_part = bundle.parse_size(args.max_part)

    out_root = Path(args.target).parent if args.target else cache.root / "build" / f"{up.name}-{version}"
    target = Path(args.target) if args.target else out_root / "site-packages"
    with tempfile.TemporaryDirectory(prefix="patchseries-build-") as tmp:
        if args.unpatched and args.checkout:
            raise UserError("--unpatched builds the pinned release: leave out --checkout")
        tree = cache.tree_at(up, Path(tmp) / "tree") if args.unpatched else \
            patched_tree(series, up, cache, args, Path(tmp))
        wheel = pinned_wheel(up, cache)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        dropped = unpack_wheel(wheel, target, args.drop)
        touched = [] if args.unpatched else overlay(series, up, tree, target)
        check = verify(up, tree, target, touched)
    result = {"upstream": up.name, "version": version, "wheel": wheel.name, "target": str(target),
              "dropped_files": dropped, "series_files": touched, **check, "bundle": None}
    if args.bundle:
        staging = Path(tempfile.mkdtemp(prefix="patchseries-bundle-"))
        try:
            shutil.copytree(target, staging / "site-packages", symlinks=True)
            if args.deps:
                bundle.download_wheels(Path(args.deps), staging / "deps")
            parts = bundle.write_bundle(staging, Path(args.bundle), max_part)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result["bundle"] = {"dir": args.bundle, "parts": [{"name": p.name, "bytes": p.stat().st_size}
                                                         for p in parts]}
    ok = not check["series_files_differing"]
    if args.json:
        report.emit_json({**result, "ok": ok})
    else:
        print(f"{up.name} {version}: {wheel.name} + {len(touched)} series file(s) -> {target}")
        print(f"  series files equal to the patched tree: "
              f"{len(touched) - len(check['series_files_differing'])}/{len(touched)}")
        print(f"  other package .py files equal to the tree: {check['other_py_identical']}"
              f" (differing: {len(check['other_py_differing'])}, only in wheel: {check['only_in_wheel']})")
        if dropped:
            print(f"  left out: {len(dropped)} file(s) matching {', '.join(args.drop)}")
        if result["bundle"]:
            print(report.table(["bundle part", "bytes"], [[p["name"], str(p["bytes"])]
                                                          for p in result["bundle"]["parts"]]))
            print(f"  install: {args.bundle}/install.sh stage DIR (per transfer), then install DIR TARGET")
    return EXIT_OK if ok else EXIT_STOPPED


def patched_tree(series, up, cache, args, tmp: Path) -> Path:
    if args.checkout:
        tree = checkout.open_checkout(args.checkout)
        checkout.detect_upstream(series, tree, up.name)
        return tree
    tree = cache.tree_at(up, tmp / "tree")
    chosen = [p for p, why in series.plan(up.name, up.artifact.version) if why is None]
    outcomes = engine.TreeApplier(tree).apply(engine.load_items(series, chosen))
    bad = [o for o in outcomes if o.outcome not in engine.SUCCESS]
    if bad:
        raise UserError(f"{bad[0].name} does not apply at the pin ({bad[0].outcome}): run tools/apply.py")
    return tree


def pinned_wheel(up, cache) -> Path:
    """The wheel of the pinned release (the pinned artifact itself when it is a wheel)."""
    sha = up.artifact.sha256 if up.artifact.kind == "wheel" else None
    file = package_index.find_release_file(up.artifact.name, up.artifact.version, "wheel",
                                           cache.index_url, sha256=sha)
    return package_index.download(file, cache.downloads, progress=cache.progress)


def unpack_wheel(wheel: Path, target: Path, drop: list[str]) -> list[str]:
    dropped = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or name.startswith("/") or ".." in name.split("/"):
                continue
            if any(fnmatch.fnmatch(name, g) or name.startswith(g.rstrip("*").rstrip("/") + "/")
                   for g in drop):
                dropped.append(name)
                continue
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            if (info.external_attr >> 16) & 0o111:
                out.chmod(0o755)
    return dropped


def series_package_files(series, up) -> list[str]:
    """site-packages paths of the package files the carried series touches."""
    out = set()
    for p, why in series.plan(up.name, up.artifact.version):
        if why is None:
            for path in patch_file.touched_paths(series.patch_file(p).read_bytes()):
                rel = up.layout.installed_path(path)
                if rel and rel.startswith(up.package + "/"):
                    out.add(rel)
    return sorted(out)


def overlay(series, up, tree: Path, target: Path) -> list[str]:
    touched = series_package_files(series, up)
    for rel in touched:
        src = tree / up.layout.prefix / rel
        dest = target / rel
        if src.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        else:
            dest.unlink(missing_ok=True)   # the series deletes it
    return touched


def verify(up, tree: Path, target: Path, touched: list[str]) -> dict:
    differing = [rel for rel in touched
                 if (tree / up.layout.prefix / rel).exists() != (target / rel).exists()
                 or ((target / rel).exists()
                     and (target / rel).read_bytes() != (tree / up.layout.prefix / rel).read_bytes())]
    identical, other_diff, only_wheel = 0, [], 0
    for f in sorted((target / up.package).rglob("*.py")):
        rel = str(f.relative_to(target))
        if rel in touched:
            continue
        src = tree / up.layout.prefix / rel
        if not src.exists():
            only_wheel += 1
        elif src.read_bytes() == f.read_bytes():
            identical += 1
        else:
            other_diff.append(rel)
    return {"series_files_differing": differing, "other_py_identical": identical,
            "other_py_differing": other_diff, "only_in_wheel": only_wheel}


if __name__ == "__main__":
    sys.exit(main_wrapper(main))

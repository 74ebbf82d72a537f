"""Turning the series commits of a tree back into patch files, in stable form."""
from __future__ import annotations

from pathlib import Path

from . import engine, git, patch_file
from .errors import UserError


def exported_patches(tree: Path, upstream_name: str) -> list[tuple[str, bytes, bool]]:
    """(file under patches/, bytes, is_new) for each series commit in the tree, oldest first."""
    base = git.rev_parse(tree, engine.UPSTREAM_HEAD_REF)
    if base is None:
        raise UserError(f"{tree} has no {engine.UPSTREAM_HEAD_REF}: apply the series there first")
    out = []
    for sha in git.commits_between(tree, base, "HEAD"):
        message = git.commit_message(tree, sha)
        name = patch_file.trailer_value(message)
        clean = git.copy_commit_with_message(tree, sha, patch_file.without_trailer(message))
        data = git.format_patch(tree, clean)
        if name is None:
            name = f"{upstream_name}/{patch_file.slug(git.commit_subject(tree, sha))}"
        out.append((name, data, patch_file.trailer_value(message) is None))
    return out


def compare(series, up, exported, check_only) -> list[dict]:
    rows = []
    for name, data, is_new in exported:
        path = series.patches_dir / name
        current = path.read_bytes() if path.exists() else None
        if current == data:
            state = "up to date"
        elif check_only:
            state = "new" if current is None else "stale"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            state = "written (new)" if current is None else "written"
        rows.append({"upstream": up.name, "file": name, "state": state})
    return rows

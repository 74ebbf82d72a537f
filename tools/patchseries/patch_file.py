"""Reading patch files: safety of their paths, their hunks, and the Patch-Filename trailer.

On import each commit's message gets a `Patch-Filename: <file>` trailer (as Electron does) so
that export and re-runs know which series entry a commit is; export removes it again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from .errors import UserError

TRAILER = "Patch-Filename"
_PATH_LINE = re.compile(rb"^(?:diff --git (?P<a>\S+) (?P<b>\S+)|(?:---|\+\+\+) (?P<f>\S+)|"
                        rb"(?:rename|copy) (?:from|to) (?P<r>.+))$", re.M)
_DIFF_START = re.compile(rb"^(?:---\r?$|diff --git )", re.M)


@dataclass(frozen=True)
class Hunk:
    file: str
    header: str          # "@@ -12,7 +12,9 @@ def f():"
    source_start: int


def _strip_prefix(path: str) -> str:
    return path[2:] if path[:2] in ("a/", "b/") else path


def touched_paths(data: bytes) -> list[str]:
    """Every path a patch names, prefix-stripped, in order of appearance, without duplicates."""
    seen = []
    for m in _PATH_LINE.finditer(data):
        for group in ("a", "b", "f", "r"):
            raw = m.group(group)
            if raw is None:
                continue
            path = raw.decode("utf-8", "surrogateescape").strip()
            if path == "/dev/null":
                continue
            if group != "r":
                path = _strip_prefix(path)
            if path not in seen:
                seen.append(path)
    return seen


def check_paths(data: bytes, label: str):
    """Refuse a patch that reaches outside the tree (absolute paths, '..')."""
    for path in touched_paths(data):
        p = PurePosixPath(path)
        if p.is_absolute() or ".." in p.parts or path.startswith("~"):
            raise UserError(f"{label}: refuses path '{path}' outside the tree")
    if not _DIFF_START.search(data):
        raise UserError(f"{label}: not a patch (no diff in it)")


def hunks(data: bytes) -> list[Hunk]:
    try:
        patch_set = PatchSet(data.decode("utf-8", "surrogateescape"))
    except UnidiffParseError:
        return []
    out = []
    for pf in patch_set:
        for h in pf:
            header = f"@@ -{h.source_start},{h.source_length} +{h.target_start},{h.target_length} @@"
            if h.section_header:
                header += f" {h.section_header}"
            out.append(Hunk(file=_strip_prefix(pf.path), header=header, source_start=h.source_start))
    return out


def with_trailer(data: bytes, filename: str) -> bytes:
    """The mailbox patch with `Patch-Filename: <filename>` as the last paragraph of its message."""
    m = _DIFF_START.search(data)
    if not m:
        raise UserError(f"{filename}: not a patch (no diff in it)")
    message, diff = data[: m.start()], data[m.start():]
    return message.rstrip(b"\r\n") + f"\n\n{TRAILER}: {filename}\n\n".encode() + diff


def trailer_value(message: str) -> str | None:
    for line in message.splitlines():
        if line.startswith(f"{TRAILER}: "):
            return line[len(TRAILER) + 2:].strip()
    return None


def without_trailer(message: str) -> str:
    lines = [line for line in message.splitlines() if not line.startswith(f"{TRAILER}: ")]
    return "\n".join(lines).rstrip("\n") + "\n"


def slug(subject: str) -> str:
    """A file name for a new commit's patch, from its subject."""
    s = re.sub(r"^\[[^\]]*\]\s*", "", subject)
    s = re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()
    return (s[:60].rstrip("-") or "patch") + ".patch"

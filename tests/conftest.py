"""Fixtures: small real git repositories in tmp dirs, patches made by real git, the real tools."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))

from patchseries import git  # noqa: E402

collect_ignore = ["regression"]   # those run inside upstream environments, via tools/regress.py

IDENTITY = {"GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
            "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z", "GIT_COMMITTER_NAME": "Test Committer",
            "GIT_COMMITTER_EMAIL": "committer@example.com", "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z"}


@dataclass
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


def run_tool(tool: str, *args, env=None, cwd=None) -> ToolResult:
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, str(TOOLS / f"{tool}.py"), *map(str, args)],
                       capture_output=True, text=True, env=full_env, cwd=cwd)
    return ToolResult(p.returncode, p.stdout, p.stderr)


def sh(repo, *args, check=True, env=None):
    return git.run(repo, *args, check=check, env={**IDENTITY, **(env or {})})


def write(repo: Path, files: dict[str, str | bytes | None]):
    for rel, content in files.items():
        path = repo / rel
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def commit_all(repo: Path, message: str) -> str:
    sh(repo, "add", "--all")
    sh(repo, "commit", "--quiet", "-m", message)
    return git.head(repo)


def numbered(n: int, prefix="line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(1, n + 1))


class Project:
    """A tmp project: series.yaml + patches/ for one toy upstream, and the upstream's git repo."""

    def __init__(self, tmp: Path):
        self.root = tmp / "project"
        (self.root / "patches" / "toy").mkdir(parents=True)
        self.upstream = tmp / "upstream"
        self.upstream.mkdir()
        git.init(self.upstream)
        write(self.upstream, {"toy/__init__.py": "", "toy/model.py": numbered(40),
                              "toy/config.py": numbered(30, "cfg"), "README": "toy upstream\n"})
        self.base = commit_all(self.upstream, "upstream 1.0")
        sh(self.upstream, "tag", "v1.0")
        self.entries: list[dict] = []

    @property
    def series(self) -> Path:
        return self.root / "series.yaml"

    def make_patch(self, name: str, changes: dict, message: str | None = None, base=None) -> Path:
        """Commit changes on a scratch branch from base, export them as patches/toy/<name>.patch."""
        base = base or self.base
        sh(self.upstream, "checkout", "--quiet", "-B", f"scratch-{name}", base)
        write(self.upstream, changes)
        sha = commit_all(self.upstream, message or f"toy: {name}\n\nWhy {name} exists.\n")
        data = git.format_patch(self.upstream, sha)
        sh(self.upstream, "checkout", "--quiet", "--detach", self.base)
        path = self.root / "patches" / "toy" / f"{name}.patch"
        path.write_bytes(data)
        self.entries.append({"name": name, "file": f"toy/{name}.patch"})
        self.write_series()
        return path

    def write_series(self, extra_yaml: str = ""):
        patches = ""
        for e in self.entries:
            fields = {"name": e["name"], "upstream": "toy", "file": e["file"],
                      "summary": f"{e['name']} summary", "why": "needed for the test",
                      "status": "carried", **e.get("fields", {})}
            patches += "  - " + "\n    ".join(f"{k}: {v}" for k, v in fields.items()) + "\n"
        self.series.write_text(textwrap.dedent(f"""\
            schema: 1
            upstreams:
              toy:
                git: https://example.invalid/toy.git
                ref: v1.0
                commit: {self.base[:12]}
                package: toy
                artifact: {{name: toy, version: "1.0", kind: sdist}}
                layout: {{strip: 1, prefix: "", exclude: [PKG-INFO]}}
            patches:
            """) + patches + extra_yaml)

    def clone(self, dest: Path, rev=None) -> Path:
        subprocess.run(["git", "clone", "--quiet", str(self.upstream), str(dest)], check=True)
        sh(dest, "checkout", "--quiet", "-B", "work", rev or self.base)
        return dest

    def tool(self, name, *args, env=None) -> ToolResult:
        return run_tool(name, "--series", self.series, *args, env={**IDENTITY, **(env or {})})


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


def tree_snapshot(repo: Path) -> dict:
    """Everything a person could lose: HEAD, branch, refs, and every file's bytes (not .git)."""
    files = {}
    for p in sorted(repo.rglob("*")):
        if ".git" in p.relative_to(repo).parts or not p.is_file():
            continue
        files[str(p.relative_to(repo))] = p.read_bytes()
    return {"head": git.head(repo), "branch": git.symbolic_head(repo),
            "refs": git.list_refs(repo, "refs/"), "files": files}

"""Thin wrappers around git commands. Nothing here knows about Gemma 4, vLLM or SGLang.

Each function runs one git command with its flags spelled out; a comment says why a
flag is there when it is not obvious.  Modelled on Electron's script/lib/git.py.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Settings that users' configs change and that would change what we read or write.
_STABLE_CONFIG = [
    "-c", "core.quotepath=true",
    "-c", "diff.noprefix=false",
    "-c", "diff.mnemonicPrefix=false",
    "-c", "color.ui=false",
    "-c", "core.autocrlf=false",   # patches and trees are byte-exact; no line-ending conversion
    "-c", "advice.detachedHead=false",
]

# Identity used only when git needs a committer and the user has none (CI, fresh machines).
_FALLBACK_IDENTITY = {
    "GIT_COMMITTER_NAME": "patchseries",
    "GIT_COMMITTER_EMAIL": "patchseries@localhost",
}


class GitError(Exception):
    def __init__(self, args, returncode, stdout, stderr):
        self.args_ = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip()[:500]}")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _env(extra=None):
    env = dict(os.environ)
    for k, v in _FALLBACK_IDENTITY.items():
        env.setdefault(k, v)
    env.setdefault("GIT_AUTHOR_NAME", env["GIT_COMMITTER_NAME"])
    env.setdefault("GIT_AUTHOR_EMAIL", env["GIT_COMMITTER_EMAIL"])
    env["LC_ALL"] = "C"  # messages we parse ("Hunk #1 succeeded ...") must be in English
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    if extra:
        env.update(extra)
    return env


def run(repo, *args, check=True, input=None, env=None, binary=False) -> Result:
    """Run `git <args>` in repo; raise GitError when check and it fails."""
    cmd = ["git", *_STABLE_CONFIG, *args]
    p = subprocess.run(cmd, cwd=str(repo), input=input, capture_output=True,
                       env=_env(env), text=not binary)
    if check and p.returncode != 0:
        err = p.stderr if not binary else p.stderr.decode(errors="replace")
        out = p.stdout if not binary else p.stdout.decode(errors="replace")
        raise GitError(list(args), p.returncode, out, err)
    return Result(p.returncode, p.stdout, p.stderr)


# --- repositories -------------------------------------------------------------------

def toplevel(path) -> Path | None:
    """The work tree root containing path, or None when path is not in a git work tree."""
    p = Path(path)
    if not p.is_dir():
        return None
    r = run(p, "rev-parse", "--show-toplevel", check=False)
    return Path(r.stdout.strip()) if r.returncode == 0 else None


def git_dir(repo) -> Path:
    out = run(repo, "rev-parse", "--absolute-git-dir").stdout.strip()
    return Path(out)


def init(path, bare=False):
    Path(path).mkdir(parents=True, exist_ok=True)
    run(path, "init", "--quiet", *(["--bare"] if bare else []))


def clone_shared(source, dest, rev):
    """A cheap independent clone: objects are borrowed from source (alternates), refs are its own."""
    run(Path(dest).parent, "clone", "--quiet", "--shared", "--no-checkout", str(source), str(dest))
    run(dest, "checkout", "--quiet", "--detach", rev)


# --- refs and commits ---------------------------------------------------------------

def rev_parse(repo, rev) -> str | None:
    r = run(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def head(repo) -> str | None:
    return rev_parse(repo, "HEAD")


def symbolic_head(repo) -> str | None:
    """refs/heads/<branch> when HEAD is on a branch, None when detached."""
    r = run(repo, "symbolic-ref", "--quiet", "HEAD", check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def update_ref(repo, ref, sha, reason="patchseries"):
    run(repo, "update-ref", "-m", reason, ref, sha)


def delete_ref(repo, ref):
    run(repo, "update-ref", "-d", ref, check=False)


def list_refs(repo, pattern) -> dict[str, str]:
    out = run(repo, "for-each-ref", "--format=%(refname) %(objectname)", pattern).stdout
    refs = {}
    for line in out.splitlines():
        name, sha = line.split(" ", 1)
        refs[name] = sha
    return refs


def commits_between(repo, base, tip) -> list[str]:
    """Commits in base..tip, oldest first."""
    out = run(repo, "rev-list", "--reverse", "--topo-order", f"{base}..{tip}").stdout
    return out.split()


def is_ancestor(repo, ancestor, descendant) -> bool:
    return run(repo, "merge-base", "--is-ancestor", ancestor, descendant, check=False).returncode == 0


def ahead_behind(repo, a, b) -> tuple[int, int]:
    """(commits only in a, commits only in b)."""
    out = run(repo, "rev-list", "--left-right", "--count", f"{a}...{b}").stdout.split()
    return int(out[0]), int(out[1])


def commit_message(repo, rev) -> str:
    return run(repo, "log", "-1", "--format=%B", rev).stdout


def commit_subject(repo, rev) -> str:
    return run(repo, "log", "-1", "--format=%s", rev).stdout.strip()


def tag(repo, name, rev, force=False):
    run(repo, "tag", *(["--force"] if force else []), name, rev)


# --- work tree state ----------------------------------------------------------------

def uncommitted_changes(repo) -> list[str]:
    """Tracked files with staged or unstaged changes (untracked files are not included)."""
    out = run(repo, "status", "--porcelain=v1", "--untracked-files=no").stdout
    return [line[3:] for line in out.splitlines() if line]


def unmerged_paths(repo) -> list[str]:
    out = run(repo, "diff", "--name-only", "--diff-filter=U").stdout
    return sorted(set(out.split()))


def reset_hard(repo, rev):
    run(repo, "reset", "--quiet", "--hard", rev)


def checkout_detached(repo, rev):
    run(repo, "checkout", "--quiet", "--detach", rev)


# --- patches ------------------------------------------------------------------------

def am(repo, patch: bytes, three_way=True, extra_env=None) -> Result:
    """Apply one mailbox patch as a commit; returns the result (does not raise)."""
    args = ["am",
            "--keep-cr",            # CRLF files keep their CRs (mailbox splitting strips them otherwise)
            "--keep-non-patch",     # keep subject tags like "[Model]"; strip only "[PATCH]"
            "--committer-date-is-author-date",  # same commit ids on every machine and every run
            "--no-gpg-sign"]
    if three_way:
        args.append("--3way")     # fall back to a 3-way merge using the blob ids in the patch
    return run(repo, *args, input=patch, check=False, binary=True, env=extra_env)


def am_in_progress(repo) -> bool:
    return (git_dir(repo) / "rebase-apply").exists()


def am_abort(repo):
    run(repo, "am", "--abort", check=False)


def am_continue(repo) -> Result:
    return run(repo, "am", "--continue", check=False, env={"GIT_EDITOR": "true"})


def am_skip(repo) -> Result:
    return run(repo, "am", "--skip", check=False)


def apply_check(repo, patch: bytes, reverse=False, paths_strip=1) -> Result:
    """`git apply --check -v`: would the patch apply to the work tree as it is?"""
    args = ["apply", "--check", "--verbose", f"-p{paths_strip}"]
    if reverse:
        args.append("--reverse")
    return run(repo, *args, input=patch, check=False, binary=True)


def apply_to_directory(directory, patch: bytes, strip: int, include: list[str],
                       check_only=False, reverse=False) -> Result:
    """Apply a patch to a plain directory (not a repository), like patch(1) but exact."""
    args = ["apply", "--verbose", f"-p{strip}", "--unsafe-paths"]
    args += [f"--include={pattern}" for pattern in include]
    if check_only:
        args.append("--check")
    if reverse:
        args.append("--reverse")
    # --git-dir points at nothing so git treats the directory as a plain directory.
    p = subprocess.run(["git", "--git-dir=/nonexistent-git-dir", *_STABLE_CONFIG, *args],
                       cwd=str(directory), input=patch, capture_output=True, env=_env())
    return Result(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def format_patch(repo, rev) -> bytes:
    """One commit as a mailbox patch, in a form that does not churn between machines."""
    return run(
        repo, "format-patch", "-1", rev, "--stdout",
        "--zero-commit",       # no commit id in the From line: avoids churn on every rebase
        "--full-index",        # full blob ids: git versions print different abbreviation widths
        "--no-signature",      # no "-- 2.39.5" trailer naming the git version
        "--no-stat",           # no diffstat: it changes with git's formatting rules
        "--no-numbered",
        "--find-renames",      # renames stay renames whatever diff.renames says
        "--no-notes",
        "--encoding=UTF-8",
        binary=True,
    ).stdout


def patch_id(repo, patch: bytes) -> str | None:
    """A stable id of the change itself (whitespace- and line-number-independent)."""
    out = run(repo, "patch-id", "--stable", input=patch, binary=True).stdout.decode()
    return out.split()[0] if out.strip() else None


def range_diff(repo, old_range, new_range) -> str:
    return run(repo, "range-diff", "--no-color", old_range, new_range).stdout


# --- importing trees ----------------------------------------------------------------

def commit_directory(repo, directory, message, parent=None, date="2000-01-01T00:00:00Z",
                     author=("Upstream import", "upstream-import@localhost")) -> str:
    """Commit the exact contents of directory as a new commit, without touching any index or tree.

    Fixed identity and date make the same directory and parent give the same commit id everywhere.
    """
    index = git_dir(repo) / "patchseries-import.index"
    env = {"GIT_INDEX_FILE": str(index), "GIT_WORK_TREE": str(directory)}
    try:
        # -f: the import must be exact, even for files an upstream .gitignore would hide.
        run(repo, "--work-tree", str(directory), "add", "--all", "--force", ".", env=env)
        tree = run(repo, "write-tree", env=env).stdout.strip()
    finally:
        index.unlink(missing_ok=True)
    ident = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1], "GIT_AUTHOR_DATE": date,
             "GIT_COMMITTER_NAME": author[0], "GIT_COMMITTER_EMAIL": author[1],
             "GIT_COMMITTER_DATE": date}
    args = ["commit-tree", tree, "-m", message]
    if parent:
        args += ["-p", parent]
    return run(repo, *args, env=ident).stdout.strip()


def copy_commit_with_message(repo, rev, message: str) -> str:
    """A new commit object identical to rev (tree, parents, author) but with another message.

    The object is not referenced by any branch; it exists so format-patch can print it.
    """
    fmt = "%T%n%P%n%an%n%ae%n%ad"
    tree, parents, name, email, date = run(repo, "log", "-1", "--date=raw", f"--format={fmt}",
                                           rev).stdout.split("\n")[:5]
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": date}
    args = ["commit-tree", tree, "-F", "-"]
    for p in parents.split():
        args += ["-p", p]
    return run(repo, *args, input=message, env=env).stdout.strip()

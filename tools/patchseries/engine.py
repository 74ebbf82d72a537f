"""Applying a series of patches to a git tree with `git am --3way`, and classifying each outcome.

The tree's upstream base is recorded as refs/patches/upstream-head (as Electron does), so that
export knows where the series starts and a re-run knows what is already there.  Before changing
anything, the applier writes its state into the repository's git dir; an interrupted or
conflicted run is then continued or aborted from that state, and abort returns HEAD, the branch,
the refs and the files to exactly what they were.
"""
from __future__ import annotations

import json
import os
import re
import signal
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import git, patch_file
from .errors import UserError

UPSTREAM_HEAD_REF = "refs/patches/upstream-head"
STATE_FILE = "patchseries-apply.json"

# Outcomes, as the table and --json show them.
CLEAN = "applied"
OFFSET = "applied with offset"
THREE_WAY = "3-way merged"
CONFLICT = "conflict"
ALREADY = "already applied"
RESOLVED = "resolved by hand"
SKIPPED = "skipped"
NOT_REACHED = "not reached"
SUCCESS = (CLEAN, OFFSET, THREE_WAY, ALREADY, RESOLVED)


@dataclass
class PatchOutcome:
    name: str
    file: str
    outcome: str
    detail: str = ""
    files: list[str] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)   # [{"file": ..., "hunks": [...]}]
    commit: str | None = None

    def to_dict(self):
        return asdict(self)


@dataclass
class SeriesItem:
    """One patch to apply: its series name, its file under patches/ and its bytes."""
    name: str
    file: str
    data: bytes


def checkpoint(name: str):
    """Fault injection for tests: PATCHSERIES_TEST_KILL_AT=<name> kills the process here (kill -9)."""
    if os.environ.get("PATCHSERIES_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def applied_files(repo, base) -> dict[str, str]:
    """Patch file -> commit, for the series commits in base..HEAD."""
    out = {}
    for sha in git.commits_between(repo, base, "HEAD"):
        value = patch_file.trailer_value(git.commit_message(repo, sha))
        if value:
            out[value] = sha
    return out


def same_change(repo, commit: str, data: bytes) -> bool:
    """Does the commit make the change the patch file describes (git patch-id)?"""
    shown = git.run(repo, "show", "--format=", "--full-index", commit, binary=True).stdout
    return git.patch_id(repo, shown) == git.patch_id(repo, data)


def _offsets(verbose_stderr: str) -> list[str]:
    return re.findall(r"Hunk #\d+ succeeded at \d+ \(offset -?\d+ lines?\)", verbose_stderr)


def _failed_hunks(item: SeriesItem, stderr: str) -> list[dict]:
    """Files and hunks git reported as not applying."""
    failed: dict[str, list[str]] = {}
    all_hunks = patch_file.hunks(item.data)
    for path, line in re.findall(r"error: patch failed: (.+):(\d+)", stderr):
        headers = [h.header for h in all_hunks if h.file == path and h.source_start == int(line)]
        failed.setdefault(path, []).extend(headers or [f"at line {line}"])
    for path in re.findall(r"error: (.+): (?:does not exist in index|No such file or directory|"
                           r"already exists in (?:index|working directory))", stderr):
        failed.setdefault(path, [])
    return [{"file": f, "hunks": h} for f, h in failed.items()]


def classify_and_apply(repo, item: SeriesItem) -> PatchOutcome:
    """Apply one patch as a commit; on conflict the `git am` session is left for a person."""
    files = patch_file.touched_paths(item.data)
    outcome = PatchOutcome(item.name, item.file, CLEAN, files=files)
    forward = git.apply_check(repo, item.data)
    if forward.returncode != 0:
        reverse = git.apply_check(repo, item.data, reverse=True)
        if reverse.returncode == 0:
            outcome.outcome = ALREADY
            outcome.detail = "the change is already in the tree"
            return outcome
    checkpoint(f"before-am:{item.name}")
    result = git.am(repo, patch_file.with_trailer(item.data, item.file))
    checkpoint(f"after-am:{item.name}")
    if result.returncode == 0:
        outcome.commit = git.head(repo)
        if forward.returncode != 0:
            outcome.outcome = THREE_WAY
            outcome.detail = "merged with the preimage blobs named in the patch"
        elif _offsets(forward.stderr.decode(errors="replace")):
            outcome.outcome = OFFSET
            outcome.detail = "; ".join(_offsets(forward.stderr.decode(errors="replace")))
        return outcome
    outcome.outcome = CONFLICT
    stderr = result.stderr.decode(errors="replace") + result.stdout.decode(errors="replace")
    conflicts = _failed_hunks(item, forward.stderr.decode(errors="replace") + stderr)
    unmerged = git.unmerged_paths(repo)
    by_file = {c["file"]: c for c in conflicts}
    for path in unmerged:
        by_file.setdefault(path, {"file": path, "hunks": []})
    outcome.conflicts = [by_file[f] for f in sorted(by_file)]
    outcome.detail = ("conflict markers in " + ", ".join(unmerged)) if unmerged else \
        next((line for line in stderr.splitlines() if line.startswith("error:")), "git am failed")
    return outcome


class TreeApplier:
    """Applies, continues, aborts and unapplies a series on one git work tree."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.state_path = git.git_dir(self.repo) / STATE_FILE

    # --- state ------------------------------------------------------------------------
    def state(self) -> dict | None:
        if not self.state_path.exists():
            return None
        return json.loads(self.state_path.read_text())

    def _save(self, state: dict):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)  # atomic: a kill never leaves half a state file

    def refuse_unsafe_start(self):
        if self.state() is not None:
            raise UserError(f"an earlier apply in {self.repo} did not finish: "
                            "rerun with --continue (after resolving) or --abort")
        if git.am_in_progress(self.repo):
            raise UserError(f"{self.repo} has a 'git am' in progress that is not ours: "
                            "finish it (git am --continue) or drop it (git am --abort) first")
        dirty = git.uncommitted_changes(self.repo)
        if dirty:
            shown = ", ".join(dirty[:3]) + (" …" if len(dirty) > 3 else "")
            raise UserError(f"{self.repo} has uncommitted changes ({shown}): "
                            "commit or stash them first; nothing was changed")

    def upstream_head(self) -> str | None:
        return git.rev_parse(self.repo, UPSTREAM_HEAD_REF)

    # --- apply ------------------------------------------------------------------------
    def apply(self, items: list[SeriesItem], stop_on_conflict=True) -> list[PatchOutcome]:
        self.refuse_unsafe_start()
        if git.head(self.repo) is None:
            raise UserError(f"{self.repo} has no commits to apply onto")
        base = self.upstream_head()
        if base is not None and not git.is_ancestor(self.repo, base, "HEAD"):
            raise UserError(f"HEAD of {self.repo} is not above {UPSTREAM_HEAD_REF}: "
                            f"check out the patched branch, or delete the ref to start afresh")
        state = {
            "pre_head": git.head(self.repo),
            "pre_branch": git.symbolic_head(self.repo),
            "pre_upstream_head": base,
            "items": [{"name": i.name, "file": i.file} for i in items],
            "next": 0,
            "outcomes": [],
            "stop_on_conflict": stop_on_conflict,
        }
        self._save(state)
        checkpoint("after-state")
        if base is None:
            git.update_ref(self.repo, UPSTREAM_HEAD_REF, state["pre_head"], "patchseries: upstream head")
        checkpoint("after-ref")
        return self._run(state, items)

    def _run(self, state: dict, items: list[SeriesItem]) -> list[PatchOutcome]:
        outcomes = [PatchOutcome(**o) for o in state["outcomes"]]
        already = applied_files(self.repo, self.upstream_head())
        for index in range(state["next"], len(items)):
            item = items[index]
            if item.file in already:
                o = PatchOutcome(item.name, item.file, ALREADY, "committed earlier in this tree",
                                 files=patch_file.touched_paths(item.data), commit=already[item.file])
                if not same_change(self.repo, already[item.file], item.data):
                    o.detail = ("an older version of this patch is committed here: "
                                "--unapply and apply again to update it")
            else:
                o = classify_and_apply(self.repo, item)
            if o.outcome == CONFLICT and not stop_on_conflict_of(state):
                git.am_abort(self.repo)
                o.detail += " (skipped: this run does not stop on conflicts)"
            outcomes.append(o)
            state["outcomes"] = [x.to_dict() for x in outcomes]
            if o.outcome == CONFLICT and stop_on_conflict_of(state):
                state["next"] = index   # --continue commits this one, then goes on
                self._save(state)
                for rest in items[index + 1:]:
                    outcomes.append(PatchOutcome(rest.name, rest.file, NOT_REACHED,
                                                 "waits for the conflict above"))
                return outcomes
            state["next"] = index + 1
            self._save(state)
            checkpoint(f"after-patch:{item.name}")
        self.state_path.unlink(missing_ok=True)
        return outcomes

    def continue_(self, items: list[SeriesItem]) -> list[PatchOutcome]:
        state = self.state()
        if state is None:
            raise UserError(f"no interrupted apply in {self.repo}: nothing to continue")
        if [i["file"] for i in state["items"]] != [i.file for i in items]:
            raise UserError("the series changed since the interrupted apply: run --abort, then apply again")
        if self.upstream_head() is None:   # killed before the ref was written
            git.update_ref(self.repo, UPSTREAM_HEAD_REF, state["pre_head"], "patchseries: upstream head")
        if git.am_in_progress(self.repo):
            unmerged = git.unmerged_paths(self.repo)
            if unmerged:
                raise UserError("still unresolved: " + ", ".join(unmerged)
                                + " — resolve them, `git add` them, then --continue again")
            result = git.am_continue(self.repo)
            if result.returncode != 0:
                raise UserError("git am --continue failed: " + (result.stderr or result.stdout).strip()
                                .splitlines()[0] + " — resolve and `git add` the files, then --continue")
            index = state["next"]
            o = state["outcomes"][index] if index < len(state["outcomes"]) else None
            if o is not None and o["outcome"] == CONFLICT:
                o["outcome"] = RESOLVED
                o["commit"] = git.head(self.repo)
                o["conflicts"] = []
            state["next"] = index + 1
            self._save(state)
        else:
            # Killed between patches (or before am wrote its state): the outcome list may
            # hold a conflict that was never left for a person; redo from the first open one.
            state["outcomes"] = [o for o in state["outcomes"][: state["next"]]
                                 if o["outcome"] != CONFLICT]
            state["next"] = len(state["outcomes"])
        return self._run(state, items)

    def skip_(self, items: list[SeriesItem], reason: str) -> list[PatchOutcome]:
        """Drop the patch that stopped on a conflict (recording why), then go on with the rest."""
        state = self.state()
        if state is None:
            raise UserError(f"no interrupted apply in {self.repo}: nothing to skip")
        if not reason.strip():
            raise UserError("--skip needs a reason (--reason '...'): it is recorded in series.yaml")
        if git.am_in_progress(self.repo):
            git.am_abort(self.repo)   # the am session holds just this one patch
        index = state["next"]
        outcomes = state["outcomes"][:index]
        item = items[index]
        outcomes.append(PatchOutcome(item.name, item.file, SKIPPED, f"dropped: {reason}",
                                     files=patch_file.touched_paths(item.data)).to_dict())
        state["outcomes"], state["next"] = outcomes, index + 1
        self._save(state)
        return self._run(state, items)

    def abort(self):
        """Back to exactly the state before the apply started: HEAD, branch, refs, files."""
        state = self.state()
        if state is None:
            raise UserError(f"no interrupted apply in {self.repo}: nothing to abort")
        if git.am_in_progress(self.repo):
            git.am_abort(self.repo)
        branch = git.symbolic_head(self.repo)
        if state["pre_branch"] and branch != state["pre_branch"]:
            git.run(self.repo, "checkout", "--quiet", "--force", state["pre_branch"].removeprefix("refs/heads/"))
        git.reset_hard(self.repo, state["pre_head"])
        if not state["pre_branch"]:
            git.checkout_detached(self.repo, state["pre_head"])
        if state["pre_upstream_head"]:
            git.update_ref(self.repo, UPSTREAM_HEAD_REF, state["pre_upstream_head"])
        else:
            git.delete_ref(self.repo, UPSTREAM_HEAD_REF)
        self.state_path.unlink(missing_ok=True)

    def unapply(self) -> int:
        """Return the tree to the upstream head; refuses when that would lose anything."""
        if self.state() is not None:
            raise UserError("an apply is in progress: --abort it instead")
        base = self.upstream_head()
        if base is None:
            raise UserError(f"{self.repo} has no {UPSTREAM_HEAD_REF}: the series was not applied here")
        dirty = git.uncommitted_changes(self.repo)
        if dirty:
            raise UserError(f"{self.repo} has uncommitted changes ({', '.join(dirty[:3])}): "
                            "commit or stash them first; nothing was changed")
        commits = git.commits_between(self.repo, base, "HEAD")
        foreign = [c for c in commits if not patch_file.trailer_value(git.commit_message(self.repo, c))]
        if foreign:
            raise UserError(f"{len(foreign)} commit(s) above the upstream head are not series patches "
                            f"(first: {foreign[0][:12]} {git.commit_subject(self.repo, foreign[0])}): "
                            "move them to another branch first; nothing was changed")
        git.reset_hard(self.repo, base)
        git.delete_ref(self.repo, UPSTREAM_HEAD_REF)
        return len(commits)


def stop_on_conflict_of(state) -> bool:
    return state.get("stop_on_conflict", True)


def dry_run(repo: Path, items: list[SeriesItem], stop_on_conflict=True) -> list[PatchOutcome]:
    """What apply would do, worked out in a throwaway clone; repo itself is not touched."""
    with tempfile.TemporaryDirectory(prefix="patchseries-check-") as tmp:
        clone = Path(tmp) / "tree"
        head = git.head(repo)
        if head is None:
            raise UserError(f"{repo} has no commits to apply onto")
        git.clone_shared(repo, clone, head)
        base = git.rev_parse(repo, UPSTREAM_HEAD_REF)
        if base:
            git.update_ref(clone, UPSTREAM_HEAD_REF, base)
        return TreeApplier(clone).apply(items, stop_on_conflict=stop_on_conflict)


def load_items(series, patches) -> list[SeriesItem]:
    """Read and check the patch files of the given series entries (refusing unsafe paths)."""
    items = []
    for p in patches:
        path = series.patch_file(p)
        if not path.is_file():
            raise UserError(f"patch file missing: {path.relative_to(series.root)} (patch '{p.name}')")
        data = path.read_bytes()
        patch_file.check_paths(data, f"patches/{p.file}")
        items.append(SeriesItem(p.name, p.file, data))
    return items

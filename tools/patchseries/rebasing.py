"""Carrying the series onto a new upstream base, one patch at a time, resumable at every step.

Phases, each recorded in the state file before it starts so that a killed run can be continued
or aborted:  start → old-series (the series on the old base, for range-diff) → new-base →
preflight (which patches upstream already has, or fixed differently) → apply (git am --3way per
patch, stopping on a conflict for a person) → finish (export, series.yaml, regression, report).
Abort returns the checkout, its refs and the project's files to exactly their prior state.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from . import engine, exporting, git, patch_file
from .engine import checkpoint
from .errors import UserError

STATE_FILE = "patchseries-rebase.json"
BACKUP_DIR = "patchseries-rebase-backup"
OLD_TIP_REF = "refs/patches/rebase-old-tip"

# Rebase outcomes beyond the apply outcomes.
ALREADY_UPSTREAM = "already upstream"
FIXED_DIFFERENTLY = "fixed upstream differently"
DROPPED = "dropped"


@dataclass
class NewBase:
    label: str              # what the user asked for: "0.21.0" or a commit-ish
    commit: str             # the commit in the tree
    version: str | None     # set when it is a package-index release


def _version_of(label: str) -> str | None:
    try:
        return str(Version(label.removeprefix("v")))
    except InvalidVersion:
        return None


class SeriesRebase:
    def __init__(self, tree: Path, series, upstream, project_root: Path):
        self.tree = Path(tree)
        self.series = series
        self.up = upstream
        self.root = Path(project_root)
        gd = git.git_dir(self.tree)
        self.state_path = gd / STATE_FILE
        self.backup = gd / BACKUP_DIR

    # --- state ------------------------------------------------------------------------
    def state(self) -> dict | None:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else None

    def save(self, state):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def items(self, names) -> list[engine.SeriesItem]:
        return engine.load_items(self.series, [self.series.patch(n) for n in names])

    # --- start ------------------------------------------------------------------------
    def start(self, onto: NewBase) -> dict:
        """Record everything needed to abort, then put the old series on the old base."""
        if self.state() is not None:
            raise UserError(f"a rebase of {self.up.name} is already in progress in {self.tree}: "
                            "use --continue, --skip --reason '...', or --abort")
        if engine.TreeApplier(self.tree).state() is not None or git.am_in_progress(self.tree):
            raise UserError(f"{self.tree} has an unfinished apply or git am: finish or abort it first")
        dirty = git.uncommitted_changes(self.tree)
        if dirty:
            raise UserError(f"{self.tree} has uncommitted changes ({', '.join(dirty[:3])}): "
                            "commit or stash them first; nothing was changed")
        carried = [p.name for p in self.series.patches_for(self.up.name)]
        state = {
            "upstream": self.up.name, "phase": "start",
            "onto": onto.__dict__, "carried": carried,
            "pre": {"head": git.head(self.tree), "branch": git.symbolic_head(self.tree),
                    "upstream_head": git.rev_parse(self.tree, engine.UPSTREAM_HEAD_REF)},
            "old": {}, "preflight": {}, "outcomes": [], "finished": False,
        }
        self.save(state)
        checkpoint("rebase:after-state")
        return state

    def run(self, state: dict, test_runner=None) -> dict:
        """Advance through the phases from wherever the state says; returns the state."""
        if state["phase"] == "start":
            self._old_series(state)
        if state["phase"] == "old-series":
            self._checkout_new_base(state)
        if state["phase"] == "new-base":
            self._preflight(state, test_runner)
        if state["phase"] == "apply":
            outcomes = self._apply(state)
            if any(o.outcome == engine.CONFLICT for o in outcomes):
                return state
        if state["phase"] == "finish":
            state["finished"] = True
        return state

    def _old_series(self, state):
        applier = engine.TreeApplier(self.tree)
        base = applier.upstream_head()
        if base is None:
            outcomes = applier.apply(self.items(state["carried"]))
            bad = [o for o in outcomes if o.outcome not in engine.SUCCESS]
            if bad:
                applier.abort()
                raise UserError(f"the series does not apply on the old base ({bad[0].name}: "
                                f"{bad[0].outcome}): fix that before rebasing")
            base = applier.upstream_head()
        commits = {}
        for sha in git.commits_between(self.tree, base, "HEAD"):
            name = patch_file.trailer_value(git.commit_message(self.tree, sha))
            if name:
                commits[name] = sha
        git.update_ref(self.tree, OLD_TIP_REF, git.head(self.tree), "patchseries: rebase old tip")
        state["old"] = {"base": base, "tip": git.head(self.tree), "commits": commits}
        state["phase"] = "old-series"
        self.save(state)
        checkpoint("rebase:old-series")

    def _checkout_new_base(self, state):
        git.checkout_detached(self.tree, state["onto"]["commit"])
        git.update_ref(self.tree, engine.UPSTREAM_HEAD_REF, state["onto"]["commit"], "patchseries: rebase")
        state["phase"] = "new-base"
        self.save(state)
        checkpoint("rebase:new-base")

    def _preflight(self, state, test_runner):
        """Patches upstream already carries: reverse-applies, same patch id, or tests already pass."""
        old_base, new_base = state["old"]["base"], state["onto"]["commit"]
        upstream_ids = self._upstream_patch_ids(old_base, new_base, state["carried"])
        for item in self.items(state["carried"]):
            if git.apply_check(self.tree, item.data, reverse=True).returncode == 0 and \
                    git.apply_check(self.tree, item.data).returncode != 0:
                state["preflight"][item.name] = [ALREADY_UPSTREAM, "the change reverse-applies on the new base"]
                continue
            pid = git.patch_id(self.tree, item.data)
            if pid and pid in upstream_ids:
                state["preflight"][item.name] = [ALREADY_UPSTREAM,
                                                 f"same patch id as upstream commit {upstream_ids[pid][:12]}"]
                continue
            if test_runner is not None:
                fixed, summary = test_runner(self.series.patch(item.name), new_base)
                if summary:
                    state.setdefault("tests_on_new_base", {})[item.name] = summary
                if fixed:
                    state["preflight"][item.name] = [FIXED_DIFFERENTLY, f"its regression tests pass on "
                                                     f"the new base without it ({summary})"]
        state["phase"] = "apply"
        self.save(state)
        checkpoint("rebase:preflight")

    def _upstream_patch_ids(self, old_base, new_base, names) -> dict[str, str]:
        """patch-id -> commit for upstream commits between the bases that touch the series' files."""
        files = sorted({f for item in self.items(names) for f in patch_file.touched_paths(item.data)})
        if not files or not git.is_ancestor(self.tree, old_base, new_base):
            return {}
        out = git.run(self.tree, "log", "--format=%H", "--no-merges", f"{old_base}..{new_base}", "--",
                      *files).stdout.split()
        ids = {}
        for sha in out[:500]:
            data = git.run(self.tree, "show", "--format=", "--full-index", sha, binary=True).stdout
            pid = git.patch_id(self.tree, data)
            if pid:
                ids[pid] = sha
        return ids

    def _to_apply(self, state) -> list[str]:
        return [n for n in state["carried"] if n not in state["preflight"]]

    def _apply(self, state) -> list[engine.PatchOutcome]:
        applier = engine.TreeApplier(self.tree)
        items = self.items(self._to_apply(state))
        if applier.state() is None:
            outcomes = applier.apply(items)
        else:
            outcomes = applier.continue_(items)
        return self._after_apply(state, outcomes)

    def _after_apply(self, state, outcomes):
        state["outcomes"] = [o.to_dict() for o in outcomes]
        if not any(o.outcome == engine.CONFLICT for o in outcomes):
            state["phase"] = "finish"
        self.save(state)
        checkpoint("rebase:after-apply")
        return outcomes

    def continue_(self, test_runner=None) -> dict:
        state = self._require_state()
        if state["phase"] == "apply" and engine.TreeApplier(self.tree).state() is not None:
            items = self.items(self._to_apply(state))
            self._after_apply(state, engine.TreeApplier(self.tree).continue_(items))
            if state["phase"] != "finish":
                return state
        return self.run(state, test_runner)

    def skip(self, reason: str, test_runner=None) -> dict:
        state = self._require_state()
        applier = engine.TreeApplier(self.tree)
        if state["phase"] != "apply" or applier.state() is None:
            raise UserError("no patch is waiting on a conflict: nothing to skip")
        outcomes = applier.skip_(self.items(self._to_apply(state)), reason)
        self._after_apply(state, outcomes)
        if state["phase"] != "finish":
            return state
        return self.run(state, test_runner)

    def _require_state(self) -> dict:
        state = self.state()
        if state is None:
            raise UserError(f"no rebase of {self.up.name} in progress in {self.tree}")
        return state

    # --- results ----------------------------------------------------------------------
    def outcomes(self, state) -> list[dict]:
        """One row per carried patch: outcome, detail, new commit, old commit."""
        applied = {o["name"]: o for o in state["outcomes"]}
        rows = []
        for name in state["carried"]:
            file = self.series.patch(name).file
            row = {"name": name, "file": file, "old_commit": state["old"].get("commits", {}).get(file)}
            if name in state["preflight"]:
                row["outcome"], row["detail"] = state["preflight"][name]
                row["new_commit"] = None
            else:
                o = applied.get(name, {"outcome": engine.NOT_REACHED, "detail": "", "commit": None})
                row["outcome"] = o["outcome"]
                if o["outcome"] == engine.SKIPPED:
                    row["outcome"] = DROPPED
                elif o["outcome"] == engine.ALREADY and not o.get("commit"):
                    row["outcome"] = ALREADY_UPSTREAM   # in the new base's files, not committed by us
                row["detail"], row["new_commit"] = o["detail"], o.get("commit")
                row["conflicts"] = o.get("conflicts", [])
            row["tests_on_new_base"] = state.get("tests_on_new_base", {}).get(name)
            if row["outcome"] == engine.CONFLICT and row["tests_on_new_base"]:
                # Part of the fix may be upstream already: say what its own tests found.
                row["detail"] += f"; its regression tests on the new base without it: {row['tests_on_new_base']}"
            rows.append(row)
        return rows

    def range_diff(self, old_commit, new_commit) -> str:
        if not old_commit or not new_commit:
            return ""
        return git.range_diff(self.tree, f"{old_commit}^..{old_commit}", f"{new_commit}^..{new_commit}")

    # --- finishing --------------------------------------------------------------------
    def write_results(self, state, rows, pin_update) -> list[str]:
        """Export refreshed patch files and update series.yaml; back both up first for --abort."""
        written = []
        targets = [self.series.path] + [self.series.patch_file(self.series.patch(r["name"])) for r in rows]
        self.backup.mkdir(exist_ok=True)
        manifest = self.backup / "manifest.json"
        if not manifest.exists():
            saved = {}
            for i, path in enumerate(targets):
                if path.exists():
                    shutil.copy2(path, self.backup / f"{i}.bak")
                saved[str(path)] = f"{i}.bak" if path.exists() else None
            manifest.write_text(json.dumps(saved))
        checkpoint("rebase:before-write")
        for name, data, _ in exporting.exported_patches(self.tree, self.up.name):
            path = self.series.patches_dir / name
            if not path.exists() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written.append(name)
        checkpoint("rebase:after-export")
        version = state["onto"]["version"]
        if pin_update and version:
            self.series.set_upstream_pin(self.up.name, ref=pin_update["ref"], commit=pin_update["commit"],
                                         version=version, sha256=pin_update["sha256"])
        # A tag like v0.21.0 of a checkout names the version upstream fixed it in, too.
        fixed_in = version or _version_of(state["onto"]["label"])
        for r in rows:
            if r["outcome"] in (ALREADY_UPSTREAM, FIXED_DIFFERENTLY) and fixed_in:
                self.series.set_patch_fields(r["name"], status="upstreamed", upstreamed_in=fixed_in,
                                             versions=f"<{fixed_in}")
            elif r["outcome"] == DROPPED:
                self.series.set_patch_fields(r["name"], status="dropped",
                                             reason=r["detail"].removeprefix("dropped: "))
        self.series.save()
        checkpoint("rebase:after-series")
        return written

    def complete(self, state):
        """Leave the tree on the rebased series (moving the branch, if one was checked out)."""
        if state["pre"]["branch"]:
            branch = state["pre"]["branch"].removeprefix("refs/heads/")
            git.run(self.tree, "checkout", "--quiet", "-B", branch, "HEAD")
        git.delete_ref(self.tree, OLD_TIP_REF)
        shutil.rmtree(self.backup, ignore_errors=True)
        self.state_path.unlink(missing_ok=True)

    def abort(self):
        """Back to exactly the state before the rebase: HEAD, branch, refs, patches/, series.yaml."""
        state = self._require_state()
        applier = engine.TreeApplier(self.tree)
        if applier.state() is not None:
            applier.abort()
        if git.am_in_progress(self.tree):
            git.am_abort(self.tree)
        manifest = self.backup / "manifest.json"
        if manifest.exists():
            for path, saved in json.loads(manifest.read_text()).items():
                if saved is None:
                    Path(path).unlink(missing_ok=True)
                else:
                    shutil.copy2(self.backup / saved, path)
        pre = state["pre"]
        if pre["branch"]:
            git.run(self.tree, "checkout", "--quiet", "--force", pre["branch"].removeprefix("refs/heads/"))
            git.reset_hard(self.tree, pre["head"])
        else:
            git.reset_hard(self.tree, pre["head"])
            git.checkout_detached(self.tree, pre["head"])
        if pre["upstream_head"]:
            git.update_ref(self.tree, engine.UPSTREAM_HEAD_REF, pre["upstream_head"])
        else:
            git.delete_ref(self.tree, engine.UPSTREAM_HEAD_REF)
        git.delete_ref(self.tree, OLD_TIP_REF)
        shutil.rmtree(self.backup, ignore_errors=True)
        self.state_path.unlink(missing_ok=True)

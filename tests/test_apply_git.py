"""tools/apply.py on a git checkout: every way a patch can meet a tree, and getting back out."""
from __future__ import annotations

import json

from conftest import commit_all, numbered, sh, tree_snapshot, write
from patchseries import engine, git


def outcomes(result) -> dict[str, str]:
    data = json.loads(result.stdout)
    return {o["name"]: o["outcome"] for r in data["results"] for o in r["outcomes"]}


def test_clean_apply_makes_one_commit_per_patch_with_its_message(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    project.make_patch("second", {"toy/config.py": numbered(30, "cfg").replace("cfg 9\n", "cfg nine\n")})
    tree = project.clone(tmp_path / "tree")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stderr
    assert outcomes(r) == {"first": "applied", "second": "applied"}
    subjects = sh(tree, "log", "--format=%s", f"{project.base}..HEAD").stdout.split("\n")[:2]
    assert subjects == ["toy: second", "toy: first"]
    assert git.rev_parse(tree, engine.UPSTREAM_HEAD_REF) == project.base
    assert "line five" in (tree / "toy/model.py").read_text()


def test_table_names_each_patch_and_says_where_the_checkout_stands(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")

    r = project.tool("apply", "--checkout", tree)

    assert r.returncode == 0
    assert "at the pinned release v1.0" in r.stdout
    assert "first" in r.stdout and "applied" in r.stdout


def test_moved_code_applies_with_offset_and_says_so(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/model.py": "new header\n" * 3 + numbered(40)})
    commit_all(tree, "upstream moved code down")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0
    assert outcomes(r) == {"edit": "applied with offset"}
    assert "offset 3 lines" in r.stdout
    assert "1 commit(s) ahead" in r.stdout


def test_changed_context_is_merged_three_way(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/model.py": numbered(40).replace("line 23\n", "line 23 changed upstream\n")})
    commit_all(tree, "upstream touched the context")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stdout + r.stderr
    assert outcomes(r) == {"edit": "3-way merged"}
    text = (tree / "toy/model.py").read_text()
    assert "line twenty\n" in text and "line 23 changed upstream\n" in text


def test_conflict_stops_with_files_and_hunks_and_instructions(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    project.make_patch("later", {"toy/config.py": numbered(30, "cfg").replace("cfg 2\n", "cfg two\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/model.py": numbered(40).replace("line 20\n", "line 20 upstream\n")})
    commit_all(tree, "upstream changed the same line")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 1
    data = json.loads(r.stdout)["results"][0]["outcomes"]
    assert [o["outcome"] for o in data] == ["conflict", "not reached"]
    assert data[0]["conflicts"][0]["file"] == "toy/model.py"
    assert data[0]["conflicts"][0]["hunks"] == ["@@ -17,7 +17,7 @@ line 16"]
    assert git.unmerged_paths(tree) == ["toy/model.py"]

    human = project.tool("apply", "--checkout", tree)
    assert human.returncode == 2 and "--continue" in human.stderr  # a second start is refused


def test_conflict_resolved_by_hand_then_continue_applies_the_rest(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    project.make_patch("later", {"toy/config.py": numbered(30, "cfg").replace("cfg 2\n", "cfg two\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/model.py": numbered(40).replace("line 20\n", "line 20 upstream\n")})
    commit_all(tree, "upstream changed the same line")
    assert project.tool("apply", "--checkout", tree).returncode == 1

    early = project.tool("apply", "--continue", "--checkout", tree)
    assert early.returncode == 2 and "still unresolved: toy/model.py" in early.stderr

    write(tree, {"toy/model.py": numbered(40).replace("line 20\n", "line twenty (merged)\n")})
    sh(tree, "add", "toy/model.py")
    r = project.tool("apply", "--continue", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stderr
    assert outcomes(r) == {"edit": "resolved by hand", "later": "applied"}
    assert not git.am_in_progress(tree)
    assert len(git.commits_between(tree, git.rev_parse(tree, engine.UPSTREAM_HEAD_REF), "HEAD")) == 2


def test_abort_after_conflict_restores_exactly_the_prior_state(project, tmp_path):
    project.make_patch("ok", {"toy/config.py": numbered(30, "cfg").replace("cfg 2\n", "cfg two\n")})
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/model.py": numbered(40).replace("line 20\n", "line 20 upstream\n")})
    commit_all(tree, "upstream changed the same line")
    write(tree, {"notes.txt": "my untracked notes\n"})
    before = tree_snapshot(tree)
    assert project.tool("apply", "--checkout", tree).returncode == 1

    r = project.tool("apply", "--abort", "--checkout", tree)

    assert r.returncode == 0, r.stderr
    assert tree_snapshot(tree) == before
    assert not git.am_in_progress(tree)


def test_rename_new_and_deleted_files(project, tmp_path):
    project.make_patch("reshape", {
        "toy/model.py": None, "toy/layers.py": numbered(40),          # rename
        "toy/kernels/fused.py": "def fused():\n    return 1\n",        # new file in a new dir
        "README": None,                                                # deletion
    })
    tree = project.clone(tmp_path / "tree")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stderr
    assert "rename from toy/model.py" in (project.root / "patches/toy/reshape.patch").read_text()
    assert not (tree / "toy/model.py").exists() and (tree / "toy/layers.py").read_text() == numbered(40)
    assert (tree / "toy/kernels/fused.py").exists() and not (tree / "README").exists()


def test_rename_upstream_is_followed_by_three_way_merge(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    tree = project.clone(tmp_path / "tree")
    sh(tree, "mv", "toy/model.py", "toy/modeling.py")
    commit_all(tree, "upstream renamed model.py")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stdout + r.stderr
    assert outcomes(r) == {"edit": "3-way merged"}
    assert "line twenty" in (tree / "toy/modeling.py").read_text()


def test_crlf_files_keep_their_line_endings(project, tmp_path):
    crlf = numbered(20).replace("\n", "\r\n").encode()
    write(project.upstream, {"toy/win.txt": crlf})
    project.base = commit_all(project.upstream, "upstream with a CRLF file")
    project.make_patch("crlf", {"toy/win.txt": crlf.replace(b"line 10\r\n", b"line ten\r\n")})
    tree = project.clone(tmp_path / "tree")

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0, r.stderr
    assert (tree / "toy/win.txt").read_bytes() == crlf.replace(b"line 10\r\n", b"line ten\r\n")


def test_rerun_is_idempotent(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    head = git.head(tree)

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0
    assert outcomes(r) == {"first": "already applied"}
    assert git.head(tree) == head


def test_change_already_present_upstream_is_detected_not_applied_twice(project, tmp_path):
    change = {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")}
    project.make_patch("first", change)
    tree = project.clone(tmp_path / "tree")
    write(tree, change)
    commit_all(tree, "upstream fixed it the same way")
    head = git.head(tree)

    r = project.tool("apply", "--checkout", tree, "--json")

    assert r.returncode == 0
    assert outcomes(r) == {"first": "already applied"}
    assert git.head(tree) == head


def test_only_and_upto_select_from_the_series_order(project, tmp_path):
    for n, name in enumerate(["a", "b", "c"], start=1):
        project.make_patch(name, {f"toy/{name}.py": f"# {name}\n"})
    tree_upto = project.clone(tmp_path / "upto")
    tree_only = project.clone(tmp_path / "only")

    assert outcomes(project.tool("apply", "--checkout", tree_upto, "--upto", "b", "--json")) == \
        {"a": "applied", "b": "applied"}
    assert outcomes(project.tool("apply", "--checkout", tree_only, "--only", "c", "--json")) == \
        {"c": "applied"}


def test_check_reports_without_changing_anything(project, tmp_path):
    project.make_patch("edit", {"toy/model.py": numbered(40).replace("line 20\n", "line twenty\n")})
    tree = project.clone(tmp_path / "tree")
    before = tree_snapshot(tree)

    r = project.tool("apply", "--check", "--checkout", tree, "--json")

    assert r.returncode == 0
    assert outcomes(r) == {"edit": "applied"}
    assert json.loads(r.stdout)["check"] is True
    assert tree_snapshot(tree) == before


def test_unapply_returns_to_the_upstream_head_exactly(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    project.make_patch("second", {"toy/new.py": "x = 1\n"})
    tree = project.clone(tmp_path / "tree")
    before = tree_snapshot(tree)
    assert project.tool("apply", "--checkout", tree).returncode == 0

    r = project.tool("apply", "--unapply", "--checkout", tree)

    assert r.returncode == 0, r.stderr
    assert tree_snapshot(tree) == before


def test_unapply_refuses_to_drop_commits_that_are_not_series_patches(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    write(tree, {"mine.py": "my work\n"})
    my_commit = commit_all(tree, "my own work")

    r = project.tool("apply", "--unapply", "--checkout", tree)

    assert r.returncode == 2 and "not series patches" in r.stderr
    assert git.head(tree) == my_commit


def test_dirty_checkout_is_refused_and_left_untouched(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    write(tree, {"toy/config.py": "my uncommitted edit\n"})
    before = tree_snapshot(tree)

    for args in ([], ["--check"], ["--unapply"]):
        r = project.tool("apply", "--checkout", tree, *args)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1
        assert tree_snapshot(tree) == before


def test_kill_at_any_step_then_rerun_offers_continue_or_abort(project, tmp_path):
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    project.make_patch("second", {"toy/config.py": numbered(30, "cfg").replace("cfg 2\n", "cfg two\n")})
    steps = ["after-state", "after-ref", "before-am:first", "after-am:first", "after-patch:first",
             "before-am:second", "after-am:second"]
    for step in steps:
        for finish in ("--continue", "--abort"):
            tree = project.clone(tmp_path / f"{step.replace(':', '-')}{finish}")
            before = tree_snapshot(tree)
            killed = project.tool("apply", "--checkout", tree, env={"PATCHSERIES_TEST_KILL_AT": step})
            assert killed.returncode == -9, step

            rerun = project.tool("apply", "--checkout", tree)
            assert rerun.returncode == 2 and "--continue" in rerun.stderr and "--abort" in rerun.stderr

            r = project.tool("apply", finish, "--checkout", tree, "--json")
            assert r.returncode == 0, (step, finish, r.stderr)
            if finish == "--abort":
                assert tree_snapshot(tree) == before, step
            else:
                base = git.rev_parse(tree, engine.UPSTREAM_HEAD_REF)
                assert len(git.commits_between(tree, base, "HEAD")) == 2, step
                assert "line five" in (tree / "toy/model.py").read_text()
                assert "cfg two" in (tree / "toy/config.py").read_text()


def test_patches_are_chosen_by_the_tree_version_and_skips_are_explained(project, tmp_path):
    project.make_patch("carried", {"toy/a.py": "a\n"})
    project.make_patch("fixed-in-1-1", {"toy/b.py": "b\n"})
    project.make_patch("abandoned", {"toy/c.py": "c\n"})
    project.make_patch("new-in-1-1", {"toy/d.py": "d\n"})
    project.entries[1]["fields"] = {"status": "upstreamed", "upstreamed_in": "'1.1'", "versions": "<1.1"}
    project.entries[2]["fields"] = {"status": "dropped", "reason": "upstream removed the feature"}
    project.entries[3]["fields"] = {"versions": "'>=1.1'"}
    project.write_series()
    old = project.clone(tmp_path / "old")                     # tagged v1.0
    new = project.clone(tmp_path / "new")
    write(new, {"toy/e.py": "e\n"})
    sh(new, "tag", "v1.1", commit_all(new, "upstream 1.1"))

    on_old = json.loads(project.tool("apply", "--checkout", old, "--json").stdout)["results"][0]
    on_new = json.loads(project.tool("apply", "--checkout", new, "--json").stdout)["results"][0]

    assert on_old["version"] == "1.0" and on_new["version"] == "1.1"
    assert {o["name"]: o["outcome"] for o in on_old["outcomes"]} == {
        "carried": "applied", "fixed-in-1-1": "applied", "abandoned": "skipped", "new-in-1-1": "skipped"}
    assert {o["name"]: o["outcome"] for o in on_new["outcomes"]} == {
        "carried": "applied", "fixed-in-1-1": "skipped", "abandoned": "skipped", "new-in-1-1": "applied"}
    details = {o["name"]: o["detail"] for o in on_new["outcomes"]}
    assert details["fixed-in-1-1"] == "upstreamed in 1.1; this is 1.1"
    assert details["abandoned"] == "dropped: upstream removed the feature"


def test_rerun_after_the_patch_file_changed_says_the_tree_has_an_older_version(project, tmp_path):
    path = project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line five\n")})
    tree = project.clone(tmp_path / "tree")
    assert project.tool("apply", "--checkout", tree).returncode == 0
    project.make_patch("first", {"toy/model.py": numbered(40).replace("line 5\n", "line FIVE\n")})
    project.entries.pop()
    project.write_series()
    assert "line FIVE" in path.read_text()

    r = project.tool("apply", "--checkout", tree, "--json")

    o = json.loads(r.stdout)["results"][0]["outcomes"][0]
    assert o["outcome"] == "already applied"
    assert "an older version of this patch is committed here" in o["detail"]

"""series.yaml: updates made by the tools keep the file's comments, order and formatting."""
from __future__ import annotations

from conftest import ROOT
from patchseries import series as series_mod


def test_round_trip_update_keeps_comments_and_order(tmp_path):
    path = tmp_path / "series.yaml"
    path.write_text((ROOT / "series.yaml").read_text())
    original = path.read_text()
    s = series_mod.load(path)
    first = s.patches[0].name

    s.set_patch_fields(first, status="upstreamed", upstreamed_in="9.9.9", versions="<9.9.9")
    s.save()
    updated = path.read_text()

    comments = [line for line in original.splitlines() if line.strip().startswith("#")]
    assert comments and all(c in updated.splitlines() for c in comments)
    assert [p.name for p in series_mod.load(path).patches] == [p.name for p in s.patches]
    changed = [line for line in updated.splitlines() if line not in original.splitlines()]
    assert sorted(changed) == sorted(["    status: upstreamed", "    upstreamed_in: 9.9.9",
                                      "    versions: <9.9.9"])


def test_saving_unchanged_series_is_byte_identical(tmp_path):
    path = tmp_path / "series.yaml"
    path.write_text((ROOT / "series.yaml").read_text())
    series_mod.load(path).save()
    assert path.read_text() == (ROOT / "series.yaml").read_text()

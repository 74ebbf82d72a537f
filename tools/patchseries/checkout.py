"""A user's own upstream checkout: which upstream it is, and where it stands against the pin."""
from __future__ import annotations

import re
from pathlib import Path

from . import git
from .errors import UserError
from .series import Series, Upstream


def open_checkout(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such directory")
    top = git.toplevel(p)
    if top is None:
        raise UserError(f"{path} is not a git checkout: give a git clone of the upstream "
                        "(or use --site-packages for an installed package)")
    return top


def detect_upstream(series: Series, tree: Path, wanted: str | None) -> Upstream:
    """The upstream whose package lies where its git layout puts it (vllm/, python/sglang/)."""
    if wanted:
        up = series.upstream(wanted)
        if not (tree / up.layout.prefix / up.package / "__init__.py").exists():
            raise UserError(f"{tree} does not look like {up.name}: no {up.layout.prefix}{up.package}/__init__.py")
        return up
    found = [u for u in series.upstreams.values()
             if (tree / u.layout.prefix / u.package / "__init__.py").exists()]
    if len(found) != 1:
        raise UserError(f"cannot tell which upstream {tree} is: pass --upstream "
                        f"({', '.join(series.upstreams)})")
    return found[0]


def pin_distance(tree: Path, upstream: Upstream, base: str) -> str:
    """A sentence on where base (the checkout's upstream head) stands against the pinned release."""
    pin = f"{upstream.ref}" + (f" (upstream commit {upstream.commit})" if upstream.commit else "")
    pinned = (upstream.commit and git.rev_parse(tree, upstream.commit)) or git.rev_parse(tree, upstream.ref)
    if pinned is None:
        return (f"the pinned release {pin} is not in this clone: fetch upstream's tags to compare; "
                "patches are applied with 3-way merge")
    if pinned == base:
        return f"at the pinned release {pin}"
    ahead, behind = git.ahead_behind(tree, base, pinned)
    return (f"{ahead} commit(s) ahead of and {behind} behind the pinned release {pin}; "
            "patches are applied with 3-way merge")


def tree_version(tree: Path, upstream: Upstream) -> str | None:
    """The upstream version a tree holds: its _version.py, else the nearest v* tag."""
    path = tree / upstream.layout.prefix / upstream.package / "_version.py"
    if path.exists():
        m = re.search(r"^__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", path.read_text(), re.M)
        if m:
            return m.group(1)
    r = git.run(tree, "describe", "--tags", "--match", "v[0-9]*", "--abbrev=0", "HEAD", check=False)
    return r.stdout.strip().removeprefix("v") if r.returncode == 0 and r.stdout.strip() else None

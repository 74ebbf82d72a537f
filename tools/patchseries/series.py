"""series.yaml: the ordered patch series, its upstream pins, and its schema.

Loading validates everything and fails with one line naming the file, line and key.
Saving is round-trip: comments, order and formatting are kept (ruamel.yaml).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("carried", "upstreamed", "dropped")
ARTIFACT_KINDS = ("sdist", "wheel")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Artifact:
    name: str       # the PyPI project
    version: str
    kind: str       # sdist | wheel
    sha256: str | None = None   # the index's hash of the pinned file; a changed file is refused


@dataclass(frozen=True)
class Layout:
    """How paths in the artifact map to paths in upstream's git repository."""
    strip: int                # leading components to drop (an sdist's top directory)
    prefix: str               # prepended to every path (SGLang's wheel has sglang/, git has python/sglang/)
    exclude: tuple[str, ...]  # artifact-only files that git does not have (PKG-INFO, *.dist-info)

    def git_path(self, artifact_path: str) -> str | None:
        parts = PurePosixPath(artifact_path).parts[self.strip:]
        if not parts:
            return None
        for pattern in self.exclude:
            if PurePosixPath(parts[0]).match(pattern):
                return None
        return self.prefix + "/".join(parts)

    def installed_path(self, git_path: str) -> str | None:
        """Path relative to site-packages for a git path, None when it is not in the package."""
        if self.prefix and not git_path.startswith(self.prefix):
            return None
        return git_path[len(self.prefix):]


@dataclass(frozen=True)
class Upstream:
    name: str
    git_url: str
    ref: str
    commit: str | None
    package: str            # the import package (directory in site-packages)
    artifact: Artifact
    layout: Layout


@dataclass(frozen=True)
class PatchTests:
    cpu: tuple[str, ...] = ()
    gpu: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class Patch:
    name: str
    upstream: str
    file: str               # relative to patches/
    summary: str
    why: str
    links: tuple[str, ...]
    status: str
    upstreamed_in: str | None = None
    reason: str | None = None
    versions: str | None = None   # PEP 440 specifier of upstream versions this patch is for
    tests: PatchTests = field(default_factory=PatchTests)

    def applies_to_version(self, version: str) -> bool:
        if self.versions is None:
            return True
        return Version(version) in SpecifierSet(self.versions)


@dataclass
class Series:
    path: Path
    upstreams: dict[str, Upstream]
    patches: list[Patch]
    _doc: object = None

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def patches_dir(self) -> Path:
        return self.root / "patches"

    def patch_file(self, patch: Patch) -> Path:
        return self.patches_dir / patch.file

    def upstream(self, name: str) -> Upstream:
        if name not in self.upstreams:
            raise UserError(f"unknown upstream '{name}' (series.yaml has: {', '.join(self.upstreams)})")
        return self.upstreams[name]

    def patch(self, name: str) -> Patch:
        for p in self.patches:
            if p.name == name:
                return p
        raise UserError(f"no patch named '{name}' in {self.path.name} "
                        f"(patches: {', '.join(p.name for p in self.patches)})")

    def patches_for(self, upstream: str, include_inactive=False) -> list[Patch]:
        return [p for p in self.patches if p.upstream == upstream
                and (include_inactive or p.status == "carried")]

    def plan(self, upstream: str, version: str | None, only: str | None = None,
             upto: str | None = None) -> list[tuple[Patch, str | None]]:
        """Every patch of one upstream in series order, with None (apply it) or why it is skipped.

        A carried patch applies unless its `versions` exclude this version; an upstreamed one
        applies only to the versions its `versions` name (those before upstream had the fix).
        """
        entries = [p for p in self.patches if p.upstream == upstream]
        if only:
            entries = [p for p in entries if p.name == self.patch(only).name]
        elif upto:
            target = self.patch(upto)
            if target.upstream == upstream:
                entries = entries[: entries.index(target) + 1]
        plan = []
        for p in entries:
            known = version is not None
            in_range = p.versions is None or (known and p.applies_to_version(version))
            if p.status == "dropped":
                plan.append((p, f"dropped: {p.reason}"))
            elif p.status == "upstreamed" and not (p.versions and known and in_range):
                plan.append((p, f"upstreamed in {p.upstreamed_in}" + (f"; this is {version}" if known else "")))
            elif not in_range:
                plan.append((p, f"for versions {p.versions} only; this is {version}"
                             if known else f"for versions {p.versions} only; this tree's version is unknown"))
            else:
                plan.append((p, None))
        return plan

    # --- round-trip updates ----------------------------------------------------------
    def set_upstream_pin(self, name: str, ref: str, commit: str | None, version: str,
                         sha256: str | None = None):
        node = self._doc["upstreams"][name]
        node["ref"] = ref
        node["commit"] = commit
        node["artifact"]["version"] = version
        if sha256:
            node["artifact"]["sha256"] = sha256
        elif "sha256" in node["artifact"]:
            del node["artifact"]["sha256"]

    def set_patch_fields(self, name: str, **fields):
        for node in self._doc["patches"]:
            if node["name"] == name:
                for k, v in fields.items():
                    if v is None:
                        node.pop(k, None)
                    else:
                        node[k] = v
                return
        raise UserError(f"no patch named '{name}' in {self.path.name}")

    def save(self):
        buf = io.StringIO()
        _yaml().dump(self._doc, buf)
        self.path.write_text(buf.getvalue())


def _yaml() -> YAML:
    y = YAML()  # round-trip mode keeps comments and order
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    # write None as `null` (ruamel's default leaves the value empty), as the file spells it
    y.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


class _Checker:
    """Validates nodes of the parsed document, naming file, line and key on failure."""

    def __init__(self, path: Path):
        self.file = path.name

    def fail(self, node, key, msg):
        line = None
        try:
            if key is not None and hasattr(node, "lc"):
                line = (node.lc.key(key) if isinstance(key, str) else node.lc.item(key))[0] + 1
            elif hasattr(node, "lc"):
                line = node.lc.line + 1
        except (KeyError, TypeError, AttributeError, IndexError):
            line = getattr(getattr(node, "lc", None), "line", None)
            line = line + 1 if line is not None else None
        where = f"{self.file}:{line}" if line else self.file
        raise UserError(f"{where}: {msg}")

    def mapping(self, parent, key, where) -> dict:
        node = parent[key] if key is not None else parent
        if not isinstance(node, dict):
            self.fail(parent, key, f"{where}: expected a mapping")
        return node

    def get(self, node, key, where, kind=str, required=True, default=None):
        if key not in node or node[key] is None:
            if required:
                self.fail(node, None, f"{where}: missing required key '{key}'")
            return default
        value = node[key]
        if kind is not None and not isinstance(value, kind):
            self.fail(node, key, f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
        return str(value) if isinstance(value, str) else value  # plain str, not ruamel's quoted kinds

    def str_list(self, node, key, where) -> tuple[str, ...]:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(node, key, f"{where}.{key}: expected a list of strings")
        return tuple(str(v) for v in value)

    def unknown_keys(self, node, allowed, where):
        for k in node:
            if k not in allowed:
                self.fail(node, k, f"{where}: unknown key '{k}' (allowed: {', '.join(allowed)})")


def load(path) -> Series:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: series file not found")
    try:
        doc = _yaml().load(path.read_text())
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path.name}{line}: not valid YAML: {problem}") from None
    c = _Checker(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path.name}: expected a mapping with 'schema', 'upstreams' and 'patches'")
    c.unknown_keys(doc, ("schema", "upstreams", "patches"), "top level")
    schema = c.get(doc, "schema", "top level", kind=int)
    if schema != SCHEMA_VERSION:
        c.fail(doc, "schema", f"schema: version {schema} is not supported (this tool reads {SCHEMA_VERSION})")

    upstreams = {}
    ups = c.mapping(doc, "upstreams", "upstreams") if "upstreams" in doc else c.fail(
        doc, None, "top level: missing required key 'upstreams'")
    for name, node in ups.items():
        name = str(name)
        where = f"upstreams.{name}"
        if not isinstance(node, dict):
            c.fail(ups, name, f"{where}: expected a mapping")
        c.unknown_keys(node, ("git", "ref", "commit", "package", "artifact", "layout"), where)
        commit = node.get("commit")
        if commit is not None and not (isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,40}", commit)):
            c.fail(node, "commit", f"{where}.commit: expected a hex commit id (7-40 digits) or null")
        art = c.mapping(node, "artifact", f"{where}.artifact") if "artifact" in node else c.fail(
            node, None, f"{where}: missing required key 'artifact'")
        c.unknown_keys(art, ("name", "version", "kind", "sha256"), f"{where}.artifact")
        sha = art.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            c.fail(art, "sha256", f"{where}.artifact.sha256: expected 64 lowercase hex digits")
        kind = c.get(art, "kind", f"{where}.artifact")
        if kind not in ARTIFACT_KINDS:
            c.fail(art, "kind", f"{where}.artifact.kind: '{kind}' is not one of {', '.join(ARTIFACT_KINDS)}")
        version = str(c.get(art, "version", f"{where}.artifact", kind=None))
        try:
            Version(version)
        except InvalidVersion:
            c.fail(art, "version", f"{where}.artifact.version: '{version}' is not a valid version")
        lay = node.get("layout") or {}
        if not isinstance(lay, dict):
            c.fail(node, "layout", f"{where}.layout: expected a mapping")
        c.unknown_keys(lay, ("strip", "prefix", "exclude"), f"{where}.layout")
        prefix = str(lay.get("prefix") or "")
        if prefix and (prefix.startswith("/") or ".." in prefix.split("/") or not prefix.endswith("/")):
            c.fail(lay, "prefix", f"{where}.layout.prefix: must be a relative directory ending in '/'")
        upstreams[name] = Upstream(
            name=name,
            git_url=c.get(node, "git", where),
            ref=c.get(node, "ref", where),
            commit=str(commit) if commit else None,
            package=c.get(node, "package", where),
            artifact=Artifact(name=c.get(art, "name", f"{where}.artifact"), version=version, kind=kind,
                              sha256=str(sha) if sha else None),
            layout=Layout(strip=int(lay.get("strip", 0)), prefix=prefix,
                          exclude=c.str_list(lay, "exclude", f"{where}.layout")),
        )

    patches: list[Patch] = []
    seen: dict[str, int] = {}
    plist = doc.get("patches")
    if plist is None:
        plist = []
    if not isinstance(plist, list):
        c.fail(doc, "patches", "patches: expected a list")
    allowed = ("name", "upstream", "file", "summary", "why", "links", "status", "upstreamed_in",
               "reason", "versions", "tests")
    for i, node in enumerate(plist):
        where = f"patches[{i}]"
        if not isinstance(node, dict):
            c.fail(plist, i, f"{where}: expected a mapping")
        c.unknown_keys(node, allowed, where)
        name = c.get(node, "name", where)
        where = f"patches[{i}] ({name})"
        if not _NAME_RE.match(name):
            c.fail(node, "name", f"{where}.name: use lowercase letters, digits, '.', '_' and '-'")
        if name in seen:
            c.fail(node, "name", f"{where}.name: duplicate patch name (first at patches[{seen[name]}])")
        seen[name] = i
        up = c.get(node, "upstream", where)
        if up not in upstreams:
            c.fail(node, "upstream", f"{where}.upstream: unknown upstream '{up}' "
                                     f"(known: {', '.join(upstreams) or 'none'})")
        file = c.get(node, "file", where)
        fp = PurePosixPath(file)
        if fp.is_absolute() or ".." in fp.parts or not file.endswith(".patch"):
            c.fail(node, "file", f"{where}.file: must be a relative path under patches/ ending in .patch")
        status = c.get(node, "status", where)
        if status not in STATUSES:
            c.fail(node, "status", f"{where}.status: '{status}' is not one of {', '.join(STATUSES)}")
        upstreamed_in = node.get("upstreamed_in")
        if status == "upstreamed" and not upstreamed_in:
            c.fail(node, "status", f"{where}: status 'upstreamed' needs 'upstreamed_in: <version>'")
        reason = node.get("reason")
        if status == "dropped" and not reason:
            c.fail(node, "status", f"{where}: status 'dropped' needs 'reason: <why>'")
        versions = node.get("versions")
        if versions is not None:
            try:
                SpecifierSet(str(versions))
            except InvalidSpecifier:
                c.fail(node, "versions", f"{where}.versions: '{versions}' is not a version specifier")
        tests = node.get("tests") or {}
        if not isinstance(tests, dict):
            c.fail(node, "tests", f"{where}.tests: expected a mapping with cpu/gpu/upstream lists")
        c.unknown_keys(tests, ("cpu", "gpu", "upstream"), f"{where}.tests")
        patches.append(Patch(
            name=name, upstream=up, file=file,
            summary=c.get(node, "summary", where),
            why=c.get(node, "why", where),
            links=c.str_list(node, "links", where),
            status=status,
            upstreamed_in=str(upstreamed_in) if upstreamed_in else None,
            reason=str(reason) if reason else None,
            versions=str(versions) if versions is not None else None,
            tests=PatchTests(cpu=c.str_list(tests, "cpu", f"{where}.tests"),
                             gpu=c.str_list(tests, "gpu", f"{where}.tests"),
                             upstream=c.str_list(tests, "upstream", f"{where}.tests")),
        ))
    return Series(path=path, upstreams=upstreams, patches=patches, _doc=doc)


def find_series_file(start=None) -> Path:
    """series.yaml of this project (tools/ lives beside it)."""
    return Path(__file__).resolve().parents[2] / "series.yaml"

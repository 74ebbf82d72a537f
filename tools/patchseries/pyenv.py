"""Python environments for an upstream's regression tests, built from a pinned requirements file.

One environment per upstream, version and requirements file content, cached under
<cache>/envs/ and reused; a half-built one (interrupted) is rebuilt.
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import UserError


class PythonEnv:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @classmethod
    def for_requirements(cls, cache_root: Path, label: str, requirements: Path, progress=True) -> "PythonEnv":
        if not requirements.is_file():
            raise UserError(f"{requirements}: no requirements file for the {label} test environment")
        key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
        env = cls(Path(cache_root) / "envs" / f"{label}-{key}")
        done = env.path / ".complete"
        if done.exists():
            return env
        env.path.parent.mkdir(parents=True, exist_ok=True)
        with open(env.path.parent / f"{env.path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # a second process waits for the first one's build
            if done.exists():
                return env
            env._build(requirements, label, progress)
        return env

    def _build(self, requirements: Path, label: str, progress: bool):
        env, done = self, self.path / ".complete"
        if env.path.exists():
            shutil.rmtree(env.path)   # an earlier build was interrupted
        if progress:
            print(f"building the {label} test environment in {env.path} (once; a few minutes)",
                  file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(env.path)], check=True)
        p = subprocess.run([str(env.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "-r", str(requirements)],
                           stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise UserError(f"building the {label} test environment failed: {last}")
        done.write_text(requirements.read_text())

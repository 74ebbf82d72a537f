"""What every command shares: its parser, the common options, and loading the series and cache."""
from __future__ import annotations

import argparse

from . import series as series_mod
from .upstream_cache import UpstreamCache


def command_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose --help shows the command's docstring as written (examples, exit codes)."""
    ap = argparse.ArgumentParser(prog=f"tools/{name}.py", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap


def add_common_options(ap: argparse.ArgumentParser):
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--cache", metavar="DIR", help="cache directory (default ~/.cache/gemma4-series)")
    # another series file: for tests and for trying a series change without touching the real one
    ap.add_argument("--series", default=str(series_mod.find_series_file()), help=argparse.SUPPRESS)


def load(args) -> tuple[series_mod.Series, UpstreamCache]:
    return series_mod.load(args.series), UpstreamCache(args.cache, progress=not args.json)

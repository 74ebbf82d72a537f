"""Expected failures become one clear line and exit code 2; nothing else is hidden."""
from __future__ import annotations

import os
import sys
import tempfile
import traceback

EXIT_OK = 0
EXIT_STOPPED = 1      # the command ran and found something that needs a person (conflict, stale files)
EXIT_BAD_INPUT = 2    # bad arguments, bad series.yaml, a tree we refuse to touch
EXIT_INTERNAL = 3     # a bug in this tool: a log file holds the traceback


class UserError(Exception):
    """A failure caused by input or environment, explained in one line."""


def main_wrapper(main, argv=None) -> int:
    """Run a command's main(), turning UserError into one line on stderr."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: rerun the command with --continue or --abort where it offers them",
              file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the point is to log what we did not expect
        fd, path = tempfile.mkstemp(prefix="patchseries-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        print(f"internal error (a bug): traceback written to {path}", file=sys.stderr)
        return EXIT_INTERNAL

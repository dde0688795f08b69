"""What every command shares: exit codes, the Dagster instance, configuration overrides, the
weights preflight."""
from __future__ import annotations

import enum
import os
import sys
from pathlib import Path

from ..config import PROJECT_ROOT


class ExitCode(enum.IntEnum):
    """What a `gen4gen` command's exit status means (README: "Exit codes")."""

    OK = 0
    # Some of the work failed (a partition, a DVC operation, a lineage check); the rest was done.
    FAILED = 1
    # The command could not start: the configuration is invalid (or the command line, as argparse says).
    CONFIG_ERROR = 2
    # A configured model's weights are missing; nothing was run.
    WEIGHTS_MISSING = 3
    # A destructive change needs confirmation that was not given; nothing was changed.
    REFUSED = 4


class CommandExit(Exception):
    """Ends a command with ``code`` after its message has been printed (``main`` returns the code)."""

    def __init__(self, code: ExitCode):
        super().__init__(code.name)
        self.code = code


def instance():
    """The project's Dagster instance (``DAGSTER_HOME``, by default ``.dagster_home/`` here)."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def overrides(args) -> dict:
    return {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}


def preflight(config) -> None:
    """Check the weights and libraries of the configured backends.

    When some are missing it says which and ends the command with ``ExitCode.WEIGHTS_MISSING``
    (raises ``CommandExit``), so no caller can run on without them.
    """
    from ..models.preflight import check

    report = check(config, PROJECT_ROOT)
    if not report.ok:
        print(report.text(), file=sys.stderr)
        print("nothing was run: provide the weights above (README.md, \"The paper profile\") or choose another "
              "profile", file=sys.stderr)
        raise CommandExit(ExitCode.WEIGHTS_MISSING)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)

"""The ``gen4gen`` command: demo data, weights, materialising the asset graph, lineage, versions.

One module per area registers its subcommands (``register(sub)``); this module only assembles them
and turns the errors every command shares into exit codes (``ExitCode``, README: "Exit codes").
"""
from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError
from . import build, concepts, lineage, models, personalise, versions
from .common import CommandExit, ExitCode

COMMAND_MODULES = (concepts, models, build, personalise, lineage, versions)


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `gen4gen lineage ... | head` ends quietly
    parser = argparse.ArgumentParser(prog="gen4gen", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML configuration file (default: $GEN4GEN_CONFIG or ./gen4gen.toml)")
    parser.add_argument("--profile", help="backend profile: embedded or paper (default: $GEN4GEN_PROFILE, the file's "
                                          "`profile`, else embedded)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    args = parser.parse_args(argv)
    if args.profile:
        # Through the environment, so the Dagster resources of an in-process run see it too.
        os.environ["GEN4GEN_PROFILE"] = args.profile
    try:
        return int(args.func(args) or ExitCode.OK)
    except ConfigError as exc:
        # The lines name the file, the key and what is allowed: a traceback would add nothing.
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    except CommandExit as exc:
        return int(exc.code)


if __name__ == "__main__":
    sys.exit(main())

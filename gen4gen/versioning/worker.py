"""A long-lived DVC process: reads one JSON request per line, runs ``dvc.cli.main(argv)``, replies.

Run by DVC's own interpreter (``.venv-dvc/bin/python -m gen4gen.versioning.worker``), which has
DVC but none of gen4gen's dependencies: this module, and the package ``__init__`` files Python
runs on the way to it, import nothing but the standard library and DVC.

Protocol: a request ``{"argv": [...], "cwd": "/repo"}``; a reply ``{"rc": 0, "out": "...",
"err": "..."}``. The process ends when its standard input closes.
"""
import io
import json
import logging
import os
import sys


def serve() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray writes to the standard streams never reach the reply channel
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # and DVC never reads a request as the answer to a prompt
    sys.stdin = open(os.devnull)
    import colorama
    import dvc.cli

    # colorama's deinit() (DVC calls it around JSON output) would put back the original sys.stdout,
    # bypassing the capture below; DVC never needs it here (no terminal, not Windows).
    colorama.deinit()
    colorama.deinit = colorama.reinit = lambda: None
    for line in requests:
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        for handler in logging.getLogger("dvc").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(err if handler.level >= logging.WARNING else out)
        try:
            os.chdir(request["cwd"])
            code = dvc.cli.main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, the worker lives on
            code = 255
            err.write("ERROR: " + repr(exc) + "\n")
        finally:
            sys.stdout, sys.stderr = saved
        reply.write(json.dumps({"rc": code or 0, "out": out.getvalue(), "err": err.getvalue()}) + "\n")
        reply.flush()


if __name__ == "__main__":
    serve()

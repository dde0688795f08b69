"""DVC's remote and workspace operations under gen4gen's lock: push, pull, checkout, status."""
from __future__ import annotations

import json

from ..config import PipelineConfig
from .command import Dvc, DvcError, DvcLocked, PLUGIN_MARKER, available_dvc, dvc_error_text
from .lockfiles import read_locks


def list_remotes(dvc: Dvc) -> dict[str, str]:
    result = dvc.run("remote", "list")
    remotes = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 1)
        if parts:
            remotes[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return remotes


def default_remote(dvc: Dvc) -> str | None:
    result = dvc.run("remote", "default", check=False)
    name = result.stdout.strip()
    return name if result.returncode == 0 and name and "No default remote" not in name else None


def remote_args(config: PipelineConfig) -> list[str]:
    return ["--remote", config.dvc.remote] if config.dvc.remote else []


def remote_error(config: PipelineConfig, dvc: Dvc, action: str, error: DvcError) -> DvcError:
    """DVC's failure to reach a remote, said as what is wrong and what to do."""
    text = error.message
    name = config.dvc.remote or "the default remote"
    if "no remote specified" in text or "doesn't exist" in text and "remote" in text:
        return DvcError(f"no DVC remote to {action}: {name} is not configured",
                        "Run `make dvc-setup` (a local folder remote, .dvc-remote/), or add one with "
                        "`.venv-dvc/bin/dvc remote add -d --local NAME URL` (S3, GCS, SSH, ...: README, "
                        "\"Versions of the data (DVC)\") or name it in [dvc] remote.")
    if PLUGIN_MARKER in text:
        plugin = text.split("requires '", 1)[-1].split("'", 1)[0]
        return DvcError(f"the DVC remote {name} needs the plugin {plugin}, which is not installed",
                        f"Install it into DVC's environment: `make dvc-setup DVC_EXTRAS={plugin.removeprefix('dvc-')}`.")
    if "Some of the cache files do not exist" in text or "missing" in text and action == "pull":
        return DvcError(f"the DVC remote {name} does not hold every file of this version: {text}",
                        "Push that version from a checkout that has it (`gen4gen dvc push`), or check that "
                        "[dvc] remote names the right remote.")
    remotes = {}
    try:
        remotes = list_remotes(dvc)
    except DvcError:
        pass
    where = f" ({remotes[config.dvc.remote]})" if config.dvc.remote in remotes else ""
    return DvcError(f"could not {action} the DVC remote {name}{where}: {text}",
                    "Check that the remote is reachable (network, credentials, the folder exists and is writable), "
                    f"then run `gen4gen dvc {action}` again. The data stay committed in the local DVC cache; "
                    "nothing was lost.")


def push_data(config: PipelineConfig, targets: list[str] | None = None, dvc: Dvc | None = None) -> str:
    """`dvc push` (all stages, or ``targets``) to [dvc] remote or DVC's default remote."""
    dvc = dvc or available_dvc(config)
    with dvc.serialised():
        try:
            return dvc.run("push", *remote_args(config), *(targets or [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            raise remote_error(config, dvc, "push", exc) from None


def pull_data(config: PipelineConfig, force: bool = False) -> str:
    """`dvc pull`: fetch the version dvc.lock names from the remote and check it out."""
    dvc = available_dvc(config)
    with dvc.serialised():
        try:
            return dvc.run("pull", *remote_args(config), *(["--force"] if force else [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            if needs_confirmation(exc):
                raise uncommitted_error(exc) from None
            raise remote_error(config, dvc, "pull", exc) from None


def needs_confirmation(exc: DvcError) -> bool:
    """DVC refuses to overwrite workspace changes without --force (two wordings across versions)."""
    return "without confirmation" in exc.message or "without a confirmation" in exc.message


def uncommitted_error(exc: DvcError) -> DvcError:
    return DvcError(f"the workspace has data that this version would overwrite: {exc.message}",
                    "Commit it first (`gen4gen dvc commit`, then commit dvc.yaml and dvc.lock to git), or pass "
                    "--force to discard it.")


def checkout_data(config: PipelineConfig, force: bool = False) -> dict:
    """`dvc checkout`: make the data folder match dvc.lock (after `git checkout <version>`).

    Returns what was done and the partition folders that are not part of this version (kept).
    """
    dvc = available_dvc(config)
    with dvc.serialised():
        try:
            output = dvc.run("checkout", *(["--force"] if force else [])).stdout.strip()
        except DvcLocked:
            raise
        except DvcError as exc:
            if needs_confirmation(exc):
                raise uncommitted_error(exc) from None
            if "cache files do not exist" in exc.message or "missing" in exc.message:
                raise DvcError(f"the local DVC cache lacks files of this version: {exc.message}",
                               "Fetch them from the remote: `gen4gen dvc pull`.") from None
            raise
    lock = read_locks(dvc.root)
    tracked = {(dvc.root / out).resolve() for entry in lock.values() for out in entry["outs"]}
    paths = config.paths
    extra: list[str] = []
    for parent in (paths.build / name for name in ("segmented", "layouts", "composed", "recoloured", "captions")):
        if parent.is_dir():
            extra += [str(p) for p in sorted(parent.iterdir()) if p.is_dir() and p.resolve() not in tracked]
    return {"output": output, "untracked": extra}


def status(config: PipelineConfig) -> dict:
    """`dvc status --json`: {} when every stage's deps and outs match dvc.lock and the cache."""
    dvc = available_dvc(config)
    with dvc.serialised():
        result = dvc.run("status", "--json")
    text = result.stdout.strip()
    if not text:  # `dvc status --json` prints {} when everything is up to date
        raise DvcError(f"`dvc status --json` printed nothing in {dvc.root}: {dvc_error_text(result.stderr)}")
    return json.loads(text)


"""Setting up the DVC repository: `make dvc-setup` / `gen4gen dvc setup`."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..config import PipelineConfig
from .command import Dvc, DvcUnavailable, not_installed
from .remote import default_remote, list_remotes
from .stages import dump_dvc_yaml


def setup_repository(config: PipelineConfig, log=print) -> list[str]:
    """A DVC repository at the root, our cache settings, a default remote."""
    from ..io import atomic_write_text

    if not config.dvc.enabled:
        raise DvcUnavailable("DVC versioning is switched off ([dvc] enabled = false)")
    dvc = Dvc.from_config(config)
    if not dvc.executable.is_file():
        raise not_installed(dvc.executable)
    done = []
    if not (dvc.root / ".dvc").is_dir():
        in_git = subprocess.run(["git", "-C", str(dvc.root), "rev-parse", "--git-dir"], capture_output=True,
                                text=True).returncode == 0
        dvc.run("init", *([] if in_git else ["--no-scm"]))
        done.append(f"initialised a DVC repository in {dvc.root}" + ("" if in_git else " (no git: versions cannot "
                                                                                       "be listed)"))
    with dvc.serialised():
        done += apply_settings(dvc, config)
        remotes = list_remotes(dvc)
        default = default_remote(dvc)
        name = config.dvc.remote or "local"
        if name not in remotes and (config.dvc.remote or not default):
            url = config.dvc.remote_url
            local = "://" not in url
            if local:  # a folder, relative to the repository
                url = str(Path(url) if Path(url).is_absolute() else dvc.root / url)
            dvc.run("remote", "add", "--local", *([] if default else ["--default"]), name, url)
            if local:
                Path(url).mkdir(parents=True, exist_ok=True)
            done.append(f"remote {name!r} -> {url}" + ("" if default else " (default)"))
        if not (dvc.root / "dvc.yaml").is_file():
            atomic_write_text(dvc.root / "dvc.yaml", dump_dvc_yaml({}, top=True))
            done.append("wrote an empty dvc.yaml")
    for line in done or ["DVC repository already set up"]:
        log(line)
    return done


def apply_settings(dvc: Dvc, config: PipelineConfig) -> list[str]:
    """This machine's DVC settings from [dvc] (.dvc/config.local): link types, hashing threads,
    no analytics or update checks. Reads the file first; runs `dvc config` only for a difference."""
    settings = {
        "cache.type": ",".join(config.dvc.cache_types),
        "core.checksum_jobs": str(config.dvc.checksum_jobs or max(1, os.cpu_count() or 1)),
        "core.analytics": "false",
        "core.check_update": "false",
    }
    current = local_config(dvc.root)
    done = []
    for option, value in settings.items():
        if current.get(option) != value:
            dvc.run("config", "--local", option, value)
            done.append(f"dvc config --local {option} {value}")
    return done


def local_config(root: Path) -> dict[str, str]:
    """.dvc/config.local as {"section.option": value}."""
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(root / ".dvc" / "config.local", encoding="utf-8")
    except configparser.Error:
        return {}
    return {f"{section}.{key}": value.strip().strip('"').strip("'") for section in parser.sections()
            for key, value in parser[section].items()}

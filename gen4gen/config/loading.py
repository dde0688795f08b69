"""Reading the configuration: defaults, the profile, the TOML file, the environment, overrides.

Every problem, whatever its layer, becomes a ``ConfigError`` line naming the layer it came from
(the file's path, an environment variable, an override) and the dotted key.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import ValidationError

from .errors import ConfigError, Location, problems_from_validation
from .pipeline import PROFILES, PipelineConfig, apply_profile, deep_merge

OVERRIDE_SOURCE = "override"


# Joins the Ray cluster at this address (``[ray] enabled``, ``address``) whatever the file says.
RAY_ADDRESS_ENV = "GEN4GEN_RAY_ADDRESS"
# A second TOML file merged key by key over the configuration file (`gen4gen personalise --tiny`
# writes one: the tiny models' paths); an environment variable, so step processes see it too.
OVERLAY_ENV = "GEN4GEN_CONFIG_OVERLAY"


def load_config(path: str | os.PathLike | None = None, **overrides) -> PipelineConfig:
    """Defaults, then the TOML file (explicit, ``GEN4GEN_CONFIG`` or ./gen4gen.toml), then env.

    Raises ``ConfigError`` (a ``ValueError``) listing every problem, one line each.
    """
    # (where the values came from, the values), lowest precedence first.
    layers: list[tuple[str, dict]] = []
    file = config_file(path)
    if file is not None:
        layers.append((str(file), read_toml(file)))
    overlay = Path(os.environ[OVERLAY_ENV]) if os.environ.get(OVERLAY_ENV) else None
    if overlay is not None:
        layers.append((str(overlay), read_toml(overlay)))
    if os.environ.get("GEN4GEN_DATA_DIR"):
        layers.append(("GEN4GEN_DATA_DIR", {"data_dir": os.environ["GEN4GEN_DATA_DIR"]}))
    if os.environ.get(RAY_ADDRESS_ENV):  # `gen4gen materialize --ray-address`, also seen by step processes
        layers.append((RAY_ADDRESS_ENV, {"ray": {"enabled": True, "address": os.environ[RAY_ADDRESS_ENV]}}))
    if overrides:
        layers.append((OVERRIDE_SOURCE, dict(overrides)))
    values: dict = {}
    for source, layer in layers:
        if source == RAY_ADDRESS_ENV:  # two keys of the file's [ray]; its other keys stay
            values["ray"] = {**values.get("ray", {}), **layer["ray"]}
        elif overlay is not None and source == str(overlay):
            values = deep_merge(values, layer)
        else:
            values.update(layer)
    # Profile precedence: an explicit override, then GEN4GEN_PROFILE, then the file, then embedded.
    profile, profile_source = "embedded", "defaults"
    for candidate, source in ((overrides.get("profile"), OVERRIDE_SOURCE),
                              (os.environ.get("GEN4GEN_PROFILE"), "GEN4GEN_PROFILE"),
                              (values.get("profile"), str(file))):
        if candidate:
            profile, profile_source = candidate, source
            break
    values["profile"] = profile
    merged = apply_profile(values, profile_source)
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        profile_layer = (f"profile {profile!r}", PROFILES.get(profile, {}))

        def source_of(location: Location) -> str:
            if location[:1] == ("profile",):
                return profile_source
            for source, layer in reversed(layers):
                if defines(layer, location):
                    return source
            return profile_layer[0] if defines(profile_layer[1], location) else "defaults"

        raise ConfigError(problems_from_validation(exc, PipelineConfig, source_of)) from None


def config_file(path: str | os.PathLike | None) -> Path | None:
    """The file to read: the explicit one, ``GEN4GEN_CONFIG``'s, ./gen4gen.toml, or none."""
    if path:
        file, named_by = Path(path), None
    elif os.environ.get("GEN4GEN_CONFIG"):
        file, named_by = Path(os.environ["GEN4GEN_CONFIG"]), "GEN4GEN_CONFIG"
    elif Path("gen4gen.toml").is_file():
        return Path("gen4gen.toml")
    else:
        return None
    if not file.is_file():
        where = f" (named by {named_by})" if named_by else ""
        state = "is not a file" if file.exists() else "does not exist"
        raise ConfigError([f"{file}: configuration file {state}{where}"])
    return file


def read_toml(file: Path) -> dict:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not valid TOML: the file is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot be read: {exc.strerror or exc}"]) from None


def defines(values: dict, location: Location) -> bool:
    """Whether ``values`` sets the key at ``location``."""
    node = values
    for part in location:
        if isinstance(part, int):
            return True  # an element of a list that this layer set
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True

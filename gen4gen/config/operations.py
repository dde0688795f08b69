"""Configuration sections of the operations around the pipeline: DVC versioning, rebuilds, Ray."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .types import Count, Fraction, NonNegativeCount, NonNegativeFloat, PositiveFloat, Section


class DvcConfig(Section):
    """DVC versioning of the data folder (README: "Versions of the data (DVC)"; gen4gen/versioning.py)."""

    # Off, or DVC not installed: assets still materialise; their metadata says DVC was skipped and why.
    enabled: bool = True
    # DVC lives in its own virtual environment (`make dvc-setup`); relative paths resolve against the checkout.
    executable: str = ".venv-dvc/bin/dvc"
    # The DVC repository (dvc.yaml, dvc.lock, .dvc/); the data folder must be inside it. Default: the checkout.
    root: str | None = None
    # Remote for push/pull: a remote name from DVC's configuration; empty: DVC's default remote.
    remote: str = ""
    # Folder (relative to the DVC repository) or URL that `make dvc-setup` makes the default remote if none.
    remote_url: str = ".dvc-remote"
    # Push each stage's data to the remote right after committing it (else `gen4gen dvc push`).
    push: bool = False
    # Seconds to wait for a repository locked by another DVC process before giving up on a commit.
    lock_wait_s: NonNegativeFloat = 300.0
    # DVC's cache.type, in order of preference: hardlinks cost no copy and no space (every gen4gen
    # write replaces files by rename, never in place, so the cache is never written through a link).
    cache_types: Annotated[list[Literal["reflink", "hardlink", "symlink", "copy"]], Field(min_length=1)] = [
        "hardlink", "copy"]
    # Threads hashing files (DVC's core.checksum_jobs); None: one per CPU.
    checksum_jobs: Count | None = None
    # A failed DVC commit: "warn" (the step succeeds, its metadata says why) or "fail" the step.
    on_error: Literal["warn", "fail"] = "warn"

    @field_validator("cache_types")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists each link type once, in order of preference")
        return value


class RegenerationConfig(Section):
    """How rebuilds treat failures and removals (README: "Incremental regeneration")."""

    # A partition that fails is retried by the next `materialize` or sensor tick, up to this many
    # attempts in all; then it is reported as given up until its inputs or settings change.
    max_attempts: Count = 3
    # Seconds before the first retry; doubled after every further failure.
    retry_backoff_s: NonNegativeFloat = 30.0
    # The catalogue refuses to retire more than this share of its concepts at once (a folder that
    # was unmounted or emptied by mistake) unless the removals are confirmed.
    max_removed_share: Fraction = 0.25
    # DVC commits and lineage ingestion only in the publish step (mycanvas), which commits every
    # partition made current since and ingests every journal, in dependency order: the one writer
    # a cluster needs (steps on other nodes then write only their partitions and journals).
    # Empty: on when [ray] address names a cluster, off on one machine (each step commits its own).
    single_writer: bool | None = None


class RayConfig(Section):
    """GPU stages' models in Ray actors, one per GPU, loaded once per run (README: "Scaling out").

    Off by default: the embedded default starts no Ray. Where a stage runs changes no pixel, so
    none of these keys is in a fingerprint.
    """

    enabled: bool = False
    # A running cluster ("ray://head:10001" or "head:6379"); empty: a Ray on this machine only,
    # listening on loopback.
    address: str = ""
    # This machine's address in the cluster, where it has several (or several nodes run on it).
    node_ip_address: str = ""
    # GPUs the local Ray declares (empty: those Ray detects). Declared GPUs need not exist:
    # the tests use fake ones, which only get an id and a CUDA_VISIBLE_DEVICES each.
    local_gpus: NonNegativeCount | None = None
    # GPUs each repainting worker holds (a fraction shares a card between several workers).
    repaint_gpus_per_worker: PositiveFloat = 1.0
    # How many repainting workers (empty: as many as the free GPUs hold).
    repaint_workers: Count | None = None
    # CLIP, OWL-ViT and DINO (screening and metrics) are small: each worker holds this share of a
    # GPU, so they fit beside each other; one worker per GPU of each model unless set.
    small_model_gpus_per_worker: PositiveFloat = 0.25
    small_model_workers: Count | None = None
    # Under `make ui` the steps of one run (or one backfill) share its workers, which end once no
    # step of it has used them for this long (seconds): long enough to bridge two steps.
    pool_linger_s: PositiveFloat = 60.0

    @property
    def cluster(self) -> bool:
        """Steps may run on several machines (a cluster address is set)."""
        return self.enabled and bool(self.address)

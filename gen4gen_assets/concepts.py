import shutil
import time
from pathlib import Path

from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import build_registry, load_registry, photo_path
from gen4gen.fingerprints import STAGES
from gen4gen.io import BadInput, json_bytes, sha256_bytes, write_if_changed
from gen4gen.lineage import ArtifactRecord
from resources import DvcResource, LineageResource, PipelineSettings

from .partitions import composition_partitions, concept_partitions, training_run_partitions

# The instance key naming the data folder whose partitions an instance holds.
DATA_DIR_KEY = "gen4gen/data_dir"


def bind_instance(instance, data_dir) -> None:
    """An instance holds the partitions of one data folder; another folder needs its own instance.

    An instance kept inside the data folder (``<data>/.dagster_home``) is that folder's wherever
    it is moved or mounted: it follows the folder to its new path.
    """
    bound = instance.run_storage.get_cursor_values({DATA_DIR_KEY}).get(DATA_DIR_KEY)
    travels = instance.root_directory and Path(instance.root_directory).resolve().is_relative_to(
        Path(data_dir).resolve())
    if bound and bound != str(data_dir) and travels:
        instance.run_storage.set_cursor_values({DATA_DIR_KEY: str(data_dir)})
    elif bound and bound != str(data_dir):
        raise Failure(f"this Dagster instance ({instance.root_directory}) holds the partitions of the data folder "
                      f"{bound}; {data_dir} needs an instance of its own (set DAGSTER_HOME; `gen4gen materialize "
                      "--data-dir` does so by default)", allow_retries=False)
    if not bound:
        instance.run_storage.set_cursor_values({DATA_DIR_KEY: str(data_dir)})


@asset(group_name="gen4gen", kinds={"python", "image"}, code_version="3")
def concept_images(context: AssetExecutionContext, settings: PipelineSettings,
                   lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """The user's concept photos (one folder per concept) with class names and tokens.

    Registers a ``concepts`` partition per usable folder and a ``compositions`` partition per
    proposed composition. Unusable files are listed with the reason; the rest go on. Concepts
    disappear only when their removal is confirmed (the catalogue refuses otherwise).
    """
    start = time.perf_counter()
    config = settings.config
    paths = config.paths
    bind_instance(context.instance, paths.data)
    try:
        registry = build_registry(config, load_registry(paths.registry))
    except BadInput as exc:
        raise Failure(str(exc), allow_retries=False) from exc
    changed = write_if_changed(paths.registry, json_bytes(registry))
    journal = paths.build / "catalogue" / _journal_name()
    photos = [ArtifactRecord(str(photo_path(paths.concepts, p)), p["sha256"],
                             params={"concept": c["key"], "class_name": c["class_name"]})
              for c in registry["concepts"] for p in c["photos"]]
    lineage_metadata = {}
    if changed or not journal.is_file():  # an unchanged catalogue keeps its journal (and its mtime)
        lineage_metadata = lineage.record(context, photos + [ArtifactRecord(
            str(paths.registry), sha256_bytes(paths.registry.read_bytes()),
            [(r.path, r.sha256, "listed") for r in photos])], params=config.proposal.model_dump(), journal_file=journal)
        lineage.ingest(context)

    instance = context.instance
    concept_keys = [c["key"] for c in registry["concepts"]]
    composition_keys = [c["key"] for c in registry["compositions"]]
    retired = []
    for partitions, keys in ((concept_partitions, concept_keys), (composition_partitions, composition_keys)):
        known = set(instance.get_dynamic_partitions(partitions.name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(partitions.name, new)
        # Retired partitions (removal confirmed): the event log, lineage and DVC keep their history.
        for gone in sorted(known - set(keys)):
            instance.delete_dynamic_partition(partitions.name, gone)
            retired.append((partitions.name, gone))
    # Configured training runs, so the UI can launch them (added only: a run taken out of the
    # configuration keeps its history).
    known_runs = set(instance.get_dynamic_partitions(training_run_partitions.name))
    new_runs = [run.name for run in config.training.runs if run.name not in known_runs]
    if new_runs:
        instance.add_dynamic_partitions(training_run_partitions.name, new_runs)
    removed_folders = _remove_retired_outputs(paths, concept_keys, composition_keys)
    for problem in registry["problems"]:
        context.log.warning(f"{problem['path']}: {problem['reason']}")

    table = "\n".join(["| concept | class | token | photos | version |", "|---|---|---|---|---|"] + [
        f"| {c['name']} | {c['class_name']} | {config.caption.concept_token.format(index=c['token_index'])} "
        f"| {len(c['photos'])} | {c['data_version']} |" for c in registry["concepts"]])
    problems = "\n".join(f"- `{p['path']}`: {p['reason']}" for p in registry["problems"]) or "none"
    return MaterializeResult(
        data_version=DataVersion(sha256_bytes(paths.registry.read_bytes())[:16]),
        metadata={
            "concepts": MetadataValue.int(len(concept_keys)),
            "photos": MetadataValue.int(sum(len(c["photos"]) for c in registry["concepts"])),
            "compositions": MetadataValue.json(composition_keys),
            "retired_partitions": MetadataValue.json([f"{n}:{k}" for n, k in retired]),
            "removed_folders": MetadataValue.json(removed_folders),
            "catalogue": MetadataValue.md(table),
            "problems": MetadataValue.md(problems),
            "registry": MetadataValue.path(str(paths.registry)),
            "seconds": MetadataValue.float(round(time.perf_counter() - start, 3)),
            **lineage_metadata,
            **dvc.commit(context),
        },
    )


def _remove_retired_outputs(paths, concept_keys: list[str], composition_keys: list[str]) -> list[str]:
    """Build folders of partitions the catalogue no longer has (rebuildable outputs, never photos)."""
    removed = []
    for spec in STAGES.values():
        if spec.partitioned_by is None:
            continue
        keys = set(concept_keys if spec.partitioned_by == "concepts" else composition_keys)
        parent = spec.folder(paths, "_").parent
        if not parent.is_dir():
            continue
        for folder in sorted(parent.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in keys:
                shutil.rmtree(folder)
                removed.append(str(folder.relative_to(paths.data)))
    return removed


def _journal_name() -> str:
    from gen4gen.lineage import JOURNAL_NAME

    return JOURNAL_NAME

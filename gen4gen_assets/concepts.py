import time

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import build_registry, load_registry
from gen4gen.io import json_bytes, sha256_bytes, write_if_changed
from gen4gen.lineage import ArtifactRecord
from resources import DvcResource, LineageResource, PipelineSettings

from .partitions import composition_partitions, concept_partitions


@asset(group_name="gen4gen", kinds={"python", "image"}, code_version="1")
def concept_images(context: AssetExecutionContext, settings: PipelineSettings,
                   lineage: LineageResource, dvc: DvcResource) -> MaterializeResult:
    """The user's concept photos (one folder per concept) with class names and tokens.

    Registers a ``concepts`` partition per usable folder and a ``compositions`` partition per
    proposed composition. Unusable files are listed with the reason; the rest go on.
    """
    start = time.perf_counter()
    config = settings.config
    paths = config.paths
    registry = build_registry(config, load_registry(paths.registry))
    write_if_changed(paths.registry, json_bytes(registry))
    photos = [ArtifactRecord(p["file"], p["sha256"], params={"concept": c["key"], "class_name": c["class_name"]})
              for c in registry["concepts"] for p in c["photos"]]
    lineage_metadata = lineage.record(context, photos + [ArtifactRecord(
        str(paths.registry), sha256_bytes(paths.registry.read_bytes()),
        [(r.path, r.sha256, "source_photo") for r in photos])], params=config.proposal.model_dump())

    instance = context.instance
    concept_keys = [c["key"] for c in registry["concepts"]]
    composition_keys = [c["key"] for c in registry["compositions"]]
    for partitions, keys in ((concept_partitions, concept_keys), (composition_partitions, composition_keys)):
        known = set(instance.get_dynamic_partitions(partitions.name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(partitions.name, new)
        # A removed concept folder retires its partitions (the event log and lineage keep history).
        for gone in sorted(known - set(keys)):
            instance.delete_dynamic_partition(partitions.name, gone)
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
            "catalogue": MetadataValue.md(table),
            "problems": MetadataValue.md(problems),
            "registry": MetadataValue.path(str(paths.registry)),
            "seconds": MetadataValue.float(round(time.perf_counter() - start, 3)),
            **lineage_metadata,
            **dvc.commit(context),  # DVC version of the catalogue (issue 4)
        },
    )

import time

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from gen4gen.concepts import build_registry, load_registry
from gen4gen.io import atomic_write_json, sha256_bytes
from resources import PipelineSettings

from .partitions import composition_partitions, concept_partitions


@asset(group_name="gen4gen", kinds={"python", "image"})
def concept_images(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """The user's concept photos (one folder per concept) with class names and tokens.

    Registers a ``concepts`` partition per usable folder and a ``compositions`` partition per
    proposed composition. Unusable files are listed with the reason; the rest go on.
    """
    start = time.perf_counter()
    config = settings.config
    paths = config.paths
    registry = build_registry(config, load_registry(paths.registry))
    atomic_write_json(paths.registry, registry)

    instance = context.instance
    concept_keys = [c["key"] for c in registry["concepts"]]
    composition_keys = [c["key"] for c in registry["compositions"]]
    for partitions, keys in ((concept_partitions, concept_keys), (composition_partitions, composition_keys)):
        known = set(instance.get_dynamic_partitions(partitions.name))
        new = [k for k in keys if k not in known]
        if new:
            instance.add_dynamic_partitions(partitions.name, new)
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
        },
    )

"""The captions stage."""
from __future__ import annotations

import time
from pathlib import Path


from ..concepts import concept_lookup, split_composition
from ..config import PipelineConfig
from ..io import (remove_stale_files, sha256_file)
from ..lineage import ArtifactRecord
from .common import (MANIFEST, StageResult, listing, read_manifest, write_json)


def caption_composition(composition: str, registry: dict, config: PipelineConfig, captioner,
                        out_dir: Path | None = None) -> StageResult:
    """A detailed caption and the three prompt strategies per image, with the token map."""
    from ..captions import CaptionObject, prompt_strategies, retell

    start = time.perf_counter()
    paths = config.paths
    composed = read_manifest(paths.composed(composition), f"composed images of {composition!r}",
                              "materialise composed_images first")
    recoloured = read_manifest(paths.recoloured(composition), f"recoloured images of {composition!r}",
                                "materialise recoloured_images first")
    lookup = concept_lookup(registry)
    comp_record = next((c for c in registry["compositions"] if c["key"] == composition), None)
    comp_token = config.caption.composition_token.format(index=comp_record["token_index"] if comp_record else 0)
    tokens = {key: config.caption.concept_token.format(index=lookup[key].token_index)
              for key in split_composition(composition) if key in lookup}
    canvas = composed["canvas_size"]
    by_index = {e["index"]: e for e in recoloured["images"]}
    layouts = {e["index"]: e for e in read_manifest(paths.layouts(composition), f"layouts of {composition!r}",
                                                      "materialise layouts first")["images"]}
    out_dir = out_dir or paths.captions(composition)
    captions, records = [], []
    requests = [([CaptionObject(o["concept"], o["class_name"], tokens.get(o["concept"], "<unknown>"), tuple(o["box"]))
                  for o in entry["objects"]], paths.recoloured(composition) / by_index[entry["index"]]["image"])
                for entry in composed["images"]]
    # A pooled captioner describes every image at once, spread over its workers.
    described = captioner.describe_many([(image, objects, entry["background_prompt"], canvas) for entry, (objects, image)
                                         in zip(composed["images"], requests)]) \
        if hasattr(captioner, "describe_many") else None
    for number, entry in enumerate(composed["images"]):
        objects, image_path = requests[number]
        detailed = described[number] if described is not None else \
            captioner.describe(image_path, objects, entry["background_prompt"], canvas)
        caption = {
            "index": entry["index"],
            "image": by_index[entry["index"]]["image"],
            "file": f"{entry['index']:03d}.json",
            "detailed": detailed,
            "detailed_with_tokens": retell(objects, entry["background_prompt"], canvas, use_tokens=True),
            **prompt_strategies(objects, entry["background_prompt"], comp_token),
        }
        layout_file = paths.layouts(composition) / layouts[entry["index"]]["file"]
        parents = [(str(image_path), by_index[entry["index"]]["image_sha256"], "image"),
                   (str(layout_file), sha256_file(layout_file), "layout")]
        records.append(ArtifactRecord(str(out_dir / caption["file"]), write_json(out_dir / caption["file"], caption), parents))
        captions.append(caption)
    document = {"composition": composition, "captioner": captioner.name, "composition_token": comp_token,
                "tokens": {token: lookup[key].name + f" ({lookup[key].class_name})" for key, token in tokens.items()},
                "concept_tokens": tokens, "captions": captions}
    remove_stale_files(out_dir, {c["file"] for c in captions} | {MANIFEST})
    sha = write_json(out_dir / MANIFEST, document)
    records.append(listing(out_dir / MANIFEST, sha, [(Path(r.path), r.sha256) for r in records]))
    return StageResult(document, [Path(r.path) for r in records], [], [], time.perf_counter() - start, records)

"""The personalisation loop's data: what a training run trains on, and the prompts its model is sampled with.

A run (``[[training.runs]]``) trains on MyCanvas, with the prompts one of the paper's strategies
wrote for each image (the captions asset's own text), or on its concepts' photos alone (the
paper's baseline, "a photo of <new1> cat"). Its set is the MyCanvas images whose compositions lie
within the run's concepts (all concepts when it names none), so a concept added later changes the
set of exactly the runs that include it. ``TrainingSet.digest`` is that set's identity: a model
whose recorded digest differs is stale (never retrained on its own).

Sampling prompts come in *slots* (a concept set, a background, train or held-out) shared by every
model, so the report can set their samples side by side: each model renders a slot in its own
style. Training slots use the backgrounds MyCanvas shows for that concept set; held-out slots use
backgrounds no training prompt mentions (``[sampling] held_out_backgrounds``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .captions import CaptionObject, count_phrase, prompt_strategies
from .concepts import concept_lookup, photo_path, split_composition
from .lineage.records import relative_path

TRAINING_SET_FILE = "training_set.json"
PROMPTS_FILE = "prompts.jsonl"
# The word a composition token's embedding starts from (concept tokens start from their class).
COMPOSITION_INITIALIZER = "scene"


@dataclass
class TrainingSet:
    run: str
    source: str
    strategy: str | None
    concepts: list[str]  # catalogue keys
    examples: list[dict]  # {"path", "sha256", "prompt", "composition" | "concept"}; paths relative to the data folder
    tokens: dict[str, str]  # every new token -> the word its embedding starts from
    concept_tokens: dict[str, str]  # concept key -> its catalogue token ("<new1>")
    class_names: dict[str, str]  # concept key -> class name
    composition_tokens: dict[str, str] = field(default_factory=dict)  # composition key -> "<compN>"
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """Changes exactly when the images, their bytes, their prompts or the tokens do."""
        payload = [self.source, self.strategy, self.concepts, self.tokens,
                   [(e["path"], e["sha256"], e["prompt"]) for e in self.examples]]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.examples]

    def to_dict(self) -> dict:
        return {**asdict(self), "digest": self.digest}


def run_concepts(run, registry: dict) -> list[str]:
    """The run's concepts (catalogue keys): its list, or every concept of the catalogue."""
    known = [c["key"] for c in registry.get("concepts", [])]
    if not run.concepts:
        return sorted(known)
    unknown = [name for name in run.concepts if name not in known]
    if unknown:
        raise ValueError(f"training run {run.name!r} names concepts not in the catalogue: {unknown}; known: {known}")
    return sorted(run.concepts)


def training_set(config, registry: dict, run) -> TrainingSet:
    """What ``run`` trains on now (``ValueError`` when it would be empty: nothing to learn)."""
    paths = config.paths
    lookup = concept_lookup(registry)
    concepts = run_concepts(run, registry)
    concept_tokens = {key: config.caption.concept_token.format(index=lookup[key].token_index) for key in concepts}
    class_names = {key: lookup[key].class_name for key in concepts}
    tokens = {concept_tokens[key]: class_names[key].split()[-1] for key in concepts}
    examples, composition_tokens = [], {}
    if run.source == "photos":
        for key in concepts:
            for photo in lookup[key].photos:
                examples.append({"path": relative_path(photo_path(paths.concepts, photo), paths.data), "sha256": photo.sha256,
                                 "prompt": f"a photo of {concept_tokens[key]} {class_names[key]}", "concept": key})
        strategy = None
    else:
        strategy = run.strategy
        caption_key = "detailed_with_tokens" if strategy == "detailed" else strategy
        by_key = {c["key"]: c for c in registry.get("compositions", [])}
        for row in _mycanvas_rows(paths.mycanvas):
            members = split_composition(row["composition"])
            if not set(members) <= set(concepts):
                continue
            examples.append({"path": relative_path(paths.mycanvas / row["file_name"], paths.data), "sha256": row["image_sha256"],
                             "prompt": row["captions"][caption_key], "composition": row["composition"]})
            if strategy == "global_composition_token" and row["composition"] in by_key:
                token = config.caption.composition_token.format(index=by_key[row["composition"]]["token_index"])
                composition_tokens[row["composition"]] = token
                tokens[token] = COMPOSITION_INITIALIZER
    if not examples:
        where = "photos" if run.source == "photos" else f"MyCanvas images ({paths.mycanvas / 'metadata.jsonl'})"
        raise ValueError(f"training run {run.name!r}: no {where} of its concepts {concepts}; build the dataset first "
                         "(gen4gen materialize)")
    return TrainingSet(run.name, run.source, strategy, concepts, examples, tokens, concept_tokens, class_names,
                       composition_tokens)


_ROWS_CACHE: dict[str, tuple[tuple[int, int, int], list[dict]]] = {}


def _mycanvas_rows(folder: Path) -> list[dict]:
    """The export's rows (not to be modified). A step asks for them several times (training set,
    prompt slots, fingerprints of every run): parsed once while the file is unchanged; an
    atomically replaced or edited file has another inode, size or mtime and is read again."""
    path = folder / "metadata.jsonl"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    if not path.is_file():
        return []
    key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _ROWS_CACHE.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _ROWS_CACHE.clear()  # one export at a time: keep memory to one file's rows
    _ROWS_CACHE[str(path)] = (key, rows)
    return rows


# ------------------------------------------------------------------ sampling prompts
@dataclass
class PromptSlot:
    slot: str  # "<composition>/train0", "<composition>/held_out1"
    composition: str
    background: str
    kind: str  # "train" | "held_out"
    seed: int


def prompt_slots(config, registry: dict, run) -> tuple[list[PromptSlot], list[str]]:
    """The slots every model whose run has these concepts is sampled in; notes say what was left out."""
    sampling = config.sampling
    concepts = set(run_concepts(run, registry))
    rows = _mycanvas_rows(config.paths.mycanvas)
    seen_backgrounds = {row["background_prompt"] for row in rows}
    mentioned = " ".join(p for row in rows for p in row["captions"].values()).lower()
    held_out, notes = [], []
    for background in sampling.held_out_backgrounds:
        if background.lower() in mentioned or background in seen_backgrounds:
            notes.append(f"held-out background {background!r} left out: a training prompt mentions it")
        else:
            held_out.append(background)
    slots = []
    compositions = sorted(c["key"] for c in registry.get("compositions", [])
                          if set(split_composition(c["key"])) <= concepts)
    for index, composition in enumerate(compositions):
        backgrounds = sorted({row["background_prompt"] for row in rows if row["composition"] == composition})
        chosen = [("train", b) for b in backgrounds[:sampling.train_prompts_per_set]]
        chosen += [("held_out", held_out[(index + j) % len(held_out)])
                   for j in range(min(sampling.held_out_prompts_per_set, len(held_out)))]
        counts = {"train": 0, "held_out": 0}
        for kind, background in chosen:
            slot = f"{composition}/{kind}{counts[kind]}"
            counts[kind] += 1
            seed = sampling.seed + int(hashlib.sha256(slot.encode()).hexdigest()[:8], 16) % 1_000_000
            slots.append(PromptSlot(slot, composition, background, kind, seed))
    return slots, notes


def render_prompt(slot: PromptSlot, tset: TrainingSet, config) -> str:
    """The slot in the model's own style: a training slot as the training prompt of that image
    set and background, a held-out one as the same template with the unseen background."""
    members = split_composition(slot.composition)
    objects = [CaptionObject(m, tset.class_names[m], tset.concept_tokens[m], (0, 0, 0, 0)) for m in members]
    style = tset.strategy or "background_in_text"  # the photos-only baseline: objects and background in words
    if style == "detailed":
        return f"A photo of {count_phrase([o.phrase for o in objects])} in {slot.background}."
    comp_token = tset.composition_tokens.get(slot.composition, config.caption.composition_token.format(index=0))
    prompt = prompt_strategies(objects, slot.background, comp_token)[style]
    if style != "background_in_text" and slot.kind == "held_out":  # these styles name no background: say the unseen one
        prompt += f" in {slot.background}"
    return prompt


def prompts_rows(slots: list[PromptSlot], tset: TrainingSet, config) -> list[dict]:
    """One prompts.jsonl line per image, in the format `evaluation_report` reads (plus slot and seed)."""
    token_classes = {tset.concept_tokens[k]: tset.class_names[k] for k in tset.concepts}
    rows = []
    for slot in slots:
        prompt = render_prompt(slot, tset, config)
        for j in range(config.sampling.images_per_prompt):
            rows.append({"image": f"{slot.slot.replace('/', '__')}_{j}.png", "prompt": prompt,
                         "concepts": split_composition(slot.composition), "kind": slot.kind, "tokens": token_classes,
                         "slot": slot.slot, "background": slot.background, "seed": slot.seed + j})
    return rows

"""LLM-guided layouts (the paper's stage 2) through any OpenAI-compatible chat endpoint.

For one layout the LLM returns the paper's three outputs as JSON: a background scene with
its prompt, a real-world size ratio per object (largest 1.0), and a bounding box per object
on the paper's 512-pixel template canvas. The reply is parsed with ``json.loads`` only
(never evaluated), then validated: the object count and names, every box inside the canvas
and not degenerate, sizes that are numbers. A failed validation is sent back to the LLM as
the next message and the request retried; after ``llm_max_attempts`` failures the
rule-based planner's layout is used and the fallback recorded. The prompts, the raw
replies and every error are recorded with the layout.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from gen4gen.config import LayoutConfig, resolve_path
from gen4gen.io import derive_seed
from gen4gen.layout import Layout, ObjectSpec, PlacedObject, min_box_area, plan_layouts
from gen4gen.scenes import SceneSpec

from .openai_compat import ChatClient, ChatError

PLANNER_NAME = "llm"
# Boxes narrower or shorter than this fraction of the template canvas are degenerate.
MIN_SIDE_FRACTION = 0.02
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.S)

SYSTEM_PROMPT = """You are an expert at composing realistic photographs. Given a list of objects, \
you plan one photo that contains all of them: a background scene, how large each object is in the \
real world relative to the others, and where each object goes.

Reply with one JSON object and nothing else, in exactly this form:
{{"scene": {{"name": "<short scene name>", "prompt": "<a phrase describing the background, e.g. a wooden table in a sunny kitchen>"}},
 "objects": [{{"name": "<object name exactly as given>", "size_ratio": <number>, "box": [x0, y0, x1, y1]}}, ...]}}

Rules:
- One entry per given object, with its name exactly as given; no other objects.
- size_ratio: the object's real-world size relative to the largest object in the list (the largest is 1.0, \
the smallest no less than 0.4).
- box: integer pixel coordinates on a {canvas}x{canvas} canvas, 0 <= x0 < x1 <= {canvas}, 0 <= y0 < y1 <= {canvas} \
((0, 0) is the top left). Box sizes follow the size ratios and the object's aspect ratio (width / height); \
every box covers at least {min_side} pixels of width and of height. Objects stand on a plausible ground; \
boxes may overlap a little where one object is in front of another.
- The scene must suit all the objects. Prefer one of the offered scenes when one fits."""


@dataclass
class LlmLayout(Layout):
    """A layout with the LLM exchange that produced it (or failed to)."""

    llm: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["llm"] = self.llm
        return data


class LayoutValidationError(ValueError):
    """The LLM's reply is not a usable layout; the message is sent back to it."""


# ------------------------------------------------------------------ prompts
def _object_lines(objects: list[ObjectSpec]) -> list[str]:
    return [f'- name "{o.concept}": a {o.class_name} (aspect ratio width/height {o.aspect:.2f})' for o in objects]


def user_prompt(objects: list[ObjectSpec], scenes: list[SceneSpec], index: int) -> str:
    scene_lines = [f'- "{s.name}": {s.prompt}' for s in scenes]
    return "\n".join(
        ["Objects:"] + _object_lines(objects)
        + ["", "Offered scenes (name: background prompt):"] + scene_lines
        + ["", f"This is layout number {index + 1} of this object set: vary the arrangement and, where several "
               "scenes fit, the scene between layouts.", "Reply with the JSON object only."])


def few_shot_messages(path: str | Path, count: int, canvas: int) -> list[dict]:
    """User/assistant example pairs from a COCO-style annotation file (images, annotations
    with ``bbox`` [x, y, w, h] and ``category_id``, categories; ``caption`` entries optional)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a COCO-style annotation file (needs images, annotations, "
                         f"categories): missing {exc}") from None
    boxes: dict = {}
    captions: dict = {}
    for ann in annotations:
        if "caption" in ann:
            captions.setdefault(ann["image_id"], ann["caption"].strip())
        elif "bbox" in ann and ann.get("category_id") in categories and not ann.get("iscrowd"):
            boxes.setdefault(ann["image_id"], []).append(ann)
    messages = []
    for image_id in sorted(i for i in boxes if 2 <= len(boxes[i]) <= 6 and i in images):
        if len(messages) >= 2 * count:
            break
        image = images[image_id]
        sx, sy = canvas / float(image["width"]), canvas / float(image["height"])
        anns = boxes[image_id]
        tallest = max(a["bbox"][3] for a in anns) or 1.0
        seen: dict[str, int] = {}
        objects, specs = [], []
        for ann in anns:
            cls = categories[ann["category_id"]]
            seen[cls] = seen.get(cls, 0) + 1
            name = cls.replace(" ", "_") + (str(seen[cls]) if seen[cls] > 1 else "")
            x, y, w, h = ann["bbox"]
            box = [round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)]
            objects.append({"name": name, "size_ratio": round(max(0.4, min(1.0, h / tallest)), 2), "box": box})
            specs.append(ObjectSpec(name, cls, max(w, 1e-3) / max(h, 1e-3)))
        caption = captions.get(image_id, "a photo")
        messages.append({"role": "user", "content": "\n".join(["Objects:"] + _object_lines(specs)
                                                              + ["Reply with the JSON object only."])})
        messages.append({"role": "assistant", "content": json.dumps(
            {"scene": {"name": "example", "prompt": caption}, "objects": objects})})
    return messages


# ------------------------------------------------------------------ parsing and validation
def parse_reply(content: str) -> dict:
    """Strict JSON: the whole reply (a single Markdown code fence around it is tolerated)."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LayoutValidationError(f"the reply is not valid JSON ({exc}); reply with one JSON object only") from None
    if not isinstance(data, dict):
        raise LayoutValidationError("the reply must be a JSON object with keys \"scene\" and \"objects\"")
    return data


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LayoutValidationError(f"{what} must be a number, got {json.dumps(value)}")
    return float(value)


@dataclass
class ParsedLayout:
    scene_name: str
    scene_prompt: str
    ratios: list[float]
    boxes: list[tuple[float, float, float, float]]  # template canvas, same order as the objects


def validate(data: dict, objects: list[ObjectSpec], canvas: int) -> ParsedLayout:
    """Check the reply against the request; the error names what to fix."""
    scene = data.get("scene")
    if not isinstance(scene, dict) or not isinstance(scene.get("prompt"), str) or not scene["prompt"].strip():
        raise LayoutValidationError('"scene" must be an object with a non-empty "prompt" (and a "name")')
    items = data.get("objects")
    expected = [o.concept for o in objects]
    if not isinstance(items, list):
        raise LayoutValidationError('"objects" must be a list with one entry per given object')
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if len(items) != len(objects):
        raise LayoutValidationError(f"expected exactly {len(objects)} objects ({', '.join(expected)}), got {len(items)}"
                                    f" ({', '.join(str(n) for n in names)})")
    unknown = [str(n) for n in names if n not in expected]
    if unknown:
        raise LayoutValidationError(f"unknown object name(s) {', '.join(unknown)}; use exactly these names: "
                                    f"{', '.join(expected)}")
    if len(set(names)) != len(names):
        raise LayoutValidationError(f"each object must appear once; got {', '.join(str(n) for n in names)}")
    by_name = dict(zip(names, items))
    ratios, boxes = [], []
    min_side = MIN_SIDE_FRACTION * canvas
    for obj in objects:
        item = by_name[obj.concept]
        ratio = _number(item.get("size_ratio"), f"size_ratio of {obj.concept}")
        if ratio <= 0:
            raise LayoutValidationError(f"size_ratio of {obj.concept} must be positive, got {ratio:g}")
        box = item.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise LayoutValidationError(f"box of {obj.concept} must be a list [x0, y0, x1, y1], got {json.dumps(box)}")
        x0, y0, x1, y1 = (_number(v, f"box of {obj.concept}") for v in box)
        if not (0 <= x0 < x1 <= canvas and 0 <= y0 < y1 <= canvas):
            raise LayoutValidationError(
                f"box of {obj.concept} {json.dumps(box)} is not inside the {canvas}x{canvas} canvas with x0 < x1 and "
                f"y0 < y1")
        if x1 - x0 < min_side or y1 - y0 < min_side:
            raise LayoutValidationError(f"box of {obj.concept} {json.dumps(box)} is degenerate: each side must be at "
                                        f"least {min_side:.0f} pixels")
        ratios.append(ratio)
        boxes.append((x0, y0, x1, y1))
    return ParsedLayout(str(scene.get("name") or "").strip(), scene["prompt"].strip(), ratios, boxes)


def _enlarge(box, min_area: float, canvas: float):
    """Grow a box below the paper's minimum area about its bottom centre, then keep it inside."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w * h >= min_area:
        return box, False
    scale = math.sqrt(min_area / (w * h))
    w, h = min(canvas, w * scale), min(canvas, h * scale)
    cx = (x0 + x1) / 2
    nx0 = min(max(0.0, cx - w / 2), canvas - w)
    ny1 = min(canvas, max(y1, h))
    return (nx0, ny1 - h, nx0 + w, ny1), True


# ------------------------------------------------------------------ planner
class LlmLayoutPlanner:
    """The paper profile's :class:`~gen4gen.backends.LayoutPlanner`: an OpenAI-compatible endpoint."""

    name = PLANNER_NAME

    def __init__(self, config: LayoutConfig, client: ChatClient | None = None):
        self.config = config
        self.client = client or ChatClient(config.llm)
        self._few_shot: list[dict] | None = None

    def identity(self) -> dict:
        return {"backend": self.name, **self.client.describe()}

    def close(self) -> None:
        """Nothing to release: the model runs behind the endpoint."""

    def few_shot(self) -> list[dict]:
        if self._few_shot is None:
            file = self.config.llm_few_shot_file
            self._few_shot = (few_shot_messages(resolve_path(file), self.config.llm_few_shot_examples,
                                                self.config.llm_template_canvas) if file else [])
        return self._few_shot

    def plan(self, composition: str, objects: list[ObjectSpec], n: int, seed: int, canvas_size: int,
             scenes: list[SceneSpec], first_index: int = 0) -> list[Layout]:
        if not objects:
            raise ValueError(f"{composition}: no objects to place")
        return [self._plan_one(composition, objects, i, seed, canvas_size, scenes)
                for i in range(first_index, first_index + n)]

    def _plan_one(self, composition, objects, index, seed, canvas_size, scenes) -> Layout:
        config = self.config
        template = config.llm_template_canvas
        layout_seed = derive_seed(seed, composition, index)
        system = SYSTEM_PROMPT.format(canvas=template, min_side=math.ceil(MIN_SIDE_FRACTION * template))
        messages = [{"role": "system", "content": system}, *self.few_shot(),
                    {"role": "user", "content": user_prompt(objects, scenes, index)}]
        record = {**self.client.describe(), "seed": layout_seed, "attempts": [], "fallback": False}
        parsed, last_error = None, None
        for attempt in range(max(1, config.llm_max_attempts)):
            entry = {"attempt": attempt + 1}
            try:
                reply = self.client.chat(messages, json_mode=config.llm_json_mode, seed=layout_seed + attempt)
            except ChatError as exc:
                last_error = str(exc)
                entry.update(error=last_error, response=None)
                record["attempts"].append(entry)
                continue
            entry.update(response=reply.content, finish_reason=reply.finish_reason, usage=reply.usage,
                         seconds=round(reply.seconds, 3))
            try:
                parsed = validate(parse_reply(reply.content), objects, template)
            except LayoutValidationError as exc:
                last_error = str(exc)
                entry["error"] = last_error
                record["attempts"].append(entry)
                messages = messages + [
                    {"role": "assistant", "content": reply.content},
                    {"role": "user", "content": f"That reply cannot be used: {last_error}. Reply again with the "
                                                "corrected JSON object only."}]
                continue
            entry["error"] = None
            record["attempts"].append(entry)
            break
        record["messages"] = messages
        if parsed is None:
            return self._fallback(composition, objects, index, seed, canvas_size, scenes, record, last_error)
        return self._layout(composition, objects, index, layout_seed, canvas_size, scenes, parsed, record)

    def _layout(self, composition, objects, index, layout_seed, canvas_size, scenes, parsed: ParsedLayout,
                record) -> Layout:
        config = self.config
        template = config.llm_template_canvas
        notes = []
        match = _match_scene(parsed.scene_name, parsed.scene_prompt, scenes)
        if match is not None:
            scene_name = match.name
        else:
            scene_name = re.sub(r"[^a-z0-9]+", "_", (parsed.scene_name or parsed.scene_prompt).lower()).strip("_")[:60]
            notes.append(f"scene {scene_name!r} is not in the scene bank: repainting starts from noise")
        low, high = config.size_ratio_range
        largest = max(parsed.ratios)
        min_area = min_box_area(len(objects), template)
        scale = canvas_size / template
        placed = []
        for obj, ratio, box in zip(objects, parsed.ratios, parsed.boxes):
            box, grown = _enlarge(box, min_area, template)
            if grown:
                notes.append(f"box of {obj.concept} enlarged to the paper's minimum area")
            pixel = (max(0, math.floor(box[0] * scale)), max(0, math.floor(box[1] * scale)),
                     min(canvas_size, math.ceil(box[2] * scale)), min(canvas_size, math.ceil(box[3] * scale)))
            placed.append(PlacedObject(obj.concept, obj.class_name, pixel,
                                       round(min(high, max(low, ratio / largest)), 4)))
        attempts = len(record["attempts"])
        if attempts > 1:
            notes.append(f"LLM layout valid after {attempts} attempts")
        return LlmLayout(composition, index, layout_seed, scene_name, parsed.scene_prompt, placed, PLANNER_NAME,
                         canvas_size, notes, llm=record)

    def _fallback(self, composition, objects, index, seed, canvas_size, scenes, record, error) -> Layout:
        rule = plan_layouts(composition, objects, 1, seed, canvas_size, self.config, scenes, first_index=index)[0]
        record["fallback"] = True
        note = (f"LLM layout failed after {len(record['attempts'])} attempt(s) (last error: {error}); "
                f"the rule-based planner's layout is used")
        return LlmLayout(rule.composition, rule.index, rule.seed, rule.scene, rule.background_prompt, rule.objects,
                         rule.planner, rule.canvas_size, [note, *rule.notes], llm=record)


def _match_scene(name: str, prompt: str, scenes: list[SceneSpec]) -> SceneSpec | None:
    for scene in scenes:
        if name and name.strip().lower() in (scene.name.lower(), scene.prompt.lower()):
            return scene
    for scene in scenes:
        if prompt.strip().lower() == scene.prompt.lower():
            return scene
    return None

"""Image retelling from layout geometry, and the paper's three training-prompt strategies."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass
class CaptionObject:
    concept: str
    class_name: str
    token: str  # e.g. "<new1>"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the visible object

    @property
    def phrase(self) -> str:
        return f"{self.token} {self.class_name}"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def count_phrase(class_names: list[str]) -> str:
    """``["cat", "cat", "cup"]`` -> ``two cats and a cup`` (first-appearance order)."""
    counts = Counter(class_names)
    parts = []
    for name in dict.fromkeys(class_names):
        n = counts[name]
        parts.append(f"{_article(name)} {name}" if n == 1 else f"{_NUMBER_WORDS.get(n, str(n))} {_plural(name)}")
    return _join(parts)


def _horizontal_place(box, canvas: int) -> str:
    centre = (box[0] + box[2]) / 2 / canvas
    if centre < 0.38:
        return "on the left"
    if centre > 0.62:
        return "on the right"
    return "in the middle"


def _labels(objects: list[CaptionObject]) -> list[str]:
    """Distinct names for objects sharing a class ("the first cat", "the second cat")."""
    counts = Counter(o.class_name for o in objects)
    seen: Counter = Counter()
    ordinals = ["first", "second", "third", "fourth", "fifth", "sixth"]
    labels = []
    for obj in sorted(objects, key=lambda o: o.box[0]):
        seen[obj.class_name] += 1
        k = seen[obj.class_name]
        label = f"the {ordinals[k - 1] if k <= len(ordinals) else str(k)} {obj.class_name}" if counts[obj.class_name] > 1 else f"the {obj.class_name}"
        labels.append((obj.concept, label))
    by_concept = dict(labels)
    return [by_concept[o.concept] for o in objects]


def spatial_relations(objects: list[CaptionObject], canvas: int) -> list[str]:
    """Sentences derived from the boxes only: position, depth order and relative size."""
    if not objects:
        return []
    labels = _labels(objects)
    order = sorted(range(len(objects)), key=lambda i: objects[i].box[0])
    sentences = []
    placements = [f"{labels[i]} is {_horizontal_place(objects[i].box, canvas)}" for i in order]
    sentences.append(_join(placements)[0].upper() + _join(placements)[1:] + ".")
    # Depth: lower bottom edge on the canvas means nearer the camera.
    for a, b in zip(order, order[1:]):
        box_a, box_b = objects[a].box, objects[b].box
        overlap = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
        if overlap > 0 and abs(box_a[3] - box_b[3]) > 0.03 * canvas:
            front, back = (a, b) if box_a[3] > box_b[3] else (b, a)
            sentences.append(f"{labels[front][0].upper() + labels[front][1:]} is in front of {labels[back]}.")
    if len(objects) > 1:
        areas = [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in objects]
        largest = max(range(len(objects)), key=lambda i: areas[i])
        sentences.append(f"{labels[largest][0].upper() + labels[largest][1:]} is the largest object in the scene.")
    return sentences


def retell(objects: list[CaptionObject], background: str, canvas: int, use_tokens: bool = False) -> str:
    """A detailed caption: counts, spatial relations from the boxes, the background phrase."""
    names = [o.phrase if use_tokens else o.class_name for o in objects]
    head = f"A photo of {count_phrase(names)} in {background}."
    return " ".join([head] + spatial_relations(objects, canvas))


def prompt_strategies(objects: list[CaptionObject], background: str, composition_token: str) -> dict[str, str]:
    """The paper's training-prompt strategies for personalising on MyCanvas.

    - global composition token: one extra token names the whole arrangement;
    - repeated concept tokens: every concept phrase appears twice, so none gets dropped;
    - background in text: the scene is stated in words, never bound to a token, so the
      concept tokens learn the objects and not the backdrop.
    """
    phrases = [o.phrase for o in objects]
    together = _join(phrases)
    return {
        "global_composition_token": f"a photo of {composition_token} with {together}",
        "repeated_concept_tokens": f"a photo of {together}, with {', '.join(phrases)}",
        "background_in_text": f"a photo of {together} in {background}",
    }


class LayoutRetellingCaptioner:
    """The embedded :class:`~gen4gen.backends.Captioner`: tells what the layout put where (no pixels needed)."""

    name = "layout_retelling"

    def identity(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:
        """Nothing to release: the captioner holds no model."""

    def describe(self, image, objects: list[CaptionObject], background: str, canvas: int) -> str:
        return retell(objects, background, canvas)

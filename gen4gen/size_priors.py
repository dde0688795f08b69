"""Real-world size priors: a class name's typical size and setting, and the paper's size rules.

The paper's LLM gives real-world size ratios (largest object 1.0, smallest 0.4) and boxes no
smaller than a minimum area; the rule-based layout planner (:mod:`gen4gen.layout`) takes the
same from this table. Only ratios between entries matter.
"""
from __future__ import annotations

from gen4gen.config import LayoutConfig

# name: (typical visible height in metres, preferred setting). Flat or lying objects use
# their apparent size instead; only ratios between entries matter. Settings drive the
# scene ranking: "indoor", "outdoor", or "any" when the object fits anywhere.
_PRIORS: dict[str, tuple[float, str]] = {
    # people
    "person": (1.7, "any"), "man": (1.75, "any"), "woman": (1.65, "any"), "child": (1.1, "any"),
    "astronaut": (1.8, "any"),
    # vehicles
    "bicycle": (1.0, "outdoor"), "car": (1.5, "outdoor"), "motorcycle": (1.1, "outdoor"),
    "motorbike": (1.1, "outdoor"), "scooter": (1.0, "outdoor"), "airplane": (12.0, "outdoor"),
    "bus": (3.2, "outdoor"), "train": (4.0, "outdoor"), "truck": (3.0, "outdoor"),
    "boat": (2.0, "outdoor"), "rc car": (0.15, "any"), "toy car": (0.08, "any"),
    # street
    "traffic light": (1.0, "outdoor"), "fire hydrant": (0.75, "outdoor"), "stop sign": (0.9, "outdoor"),
    "parking meter": (1.5, "outdoor"), "bench": (0.85, "outdoor"), "barn": (6.0, "outdoor"),
    "house": (7.0, "outdoor"), "tree": (6.0, "outdoor"),
    # animals
    "bird": (0.2, "outdoor"), "cat": (0.3, "outdoor"), "dog": (0.6, "outdoor"), "puppy": (0.35, "outdoor"),
    "horse": (1.6, "outdoor"), "sheep": (0.9, "outdoor"), "cow": (1.4, "outdoor"), "elephant": (3.0, "outdoor"),
    "bear": (1.1, "outdoor"), "zebra": (1.4, "outdoor"), "giraffe": (5.0, "outdoor"), "lion": (1.1, "outdoor"),
    "tiger": (1.0, "outdoor"), "duck": (0.35, "outdoor"), "rabbit": (0.25, "outdoor"),
    "tortoise": (0.2, "outdoor"), "turtle": (0.2, "outdoor"), "sloth": (0.6, "outdoor"),
    # plants
    "potted plant": (0.6, "outdoor"), "plant": (0.5, "outdoor"), "flower": (0.3, "outdoor"),
    # sports and outdoor gear
    "frisbee": (0.25, "outdoor"), "skis": (1.7, "outdoor"), "snowboard": (1.5, "outdoor"),
    "sports ball": (0.22, "outdoor"), "ball": (0.22, "any"), "kite": (1.0, "outdoor"),
    "baseball bat": (0.85, "outdoor"), "baseball glove": (0.3, "outdoor"), "skateboard": (0.8, "outdoor"),
    "surfboard": (2.0, "outdoor"), "tennis racket": (0.68, "outdoor"), "umbrella": (1.0, "any"),
    # bags, clothing, accessories
    "backpack": (0.5, "any"), "handbag": (0.3, "any"), "suitcase": (0.65, "any"), "tie": (0.5, "indoor"),
    "sneaker": (0.12, "any"), "shoe": (0.12, "any"), "boot": (0.3, "any"), "hat": (0.15, "any"),
    "glasses": (0.05, "indoor"), "sunglasses": (0.05, "any"),
    # toys
    "teddy bear": (0.35, "indoor"), "teddybear": (0.35, "indoor"), "stuffed animal": (0.3, "indoor"),
    "plushie": (0.3, "indoor"), "plush": (0.3, "indoor"), "plushy": (0.3, "indoor"), "toy": (0.2, "indoor"),
    "robot": (0.3, "indoor"), "cartoon": (0.3, "indoor"), "figurine": (0.15, "indoor"),
    # tableware and food
    "bottle": (0.28, "any"), "wine glass": (0.2, "indoor"), "cup": (0.1, "indoor"), "coffee cup": (0.1, "indoor"),
    "mug": (0.1, "indoor"), "can": (0.12, "any"), "teapot": (0.18, "indoor"), "bowl": (0.08, "indoor"),
    "pot": (0.25, "indoor"), "fork": (0.19, "indoor"), "knife": (0.22, "indoor"), "spoon": (0.17, "indoor"),
    "banana": (0.2, "indoor"), "apple": (0.08, "indoor"), "sandwich": (0.08, "indoor"),
    "orange": (0.08, "indoor"), "broccoli": (0.15, "indoor"), "carrot": (0.18, "indoor"),
    "hot dog": (0.06, "indoor"), "pizza": (0.3, "indoor"), "donut": (0.1, "indoor"), "cake": (0.15, "indoor"),
    # furniture, appliances, household things
    "chair": (0.9, "any"), "couch": (0.85, "indoor"), "sofa": (0.85, "indoor"), "bed": (1.0, "indoor"),
    "dining table": (0.75, "indoor"), "table": (0.75, "indoor"), "toilet": (0.75, "indoor"),
    "tv": (0.6, "indoor"), "laptop": (0.25, "indoor"), "mouse": (0.04, "indoor"), "remote": (0.18, "indoor"),
    "keyboard": (0.15, "indoor"), "cell phone": (0.15, "any"), "phone": (0.15, "any"),
    "microwave": (0.3, "indoor"), "oven": (0.9, "indoor"), "toaster": (0.2, "indoor"), "sink": (0.25, "indoor"),
    "refrigerator": (1.8, "indoor"), "book": (0.24, "indoor"), "clock": (0.3, "indoor"), "vase": (0.3, "indoor"),
    "scissors": (0.18, "indoor"), "hair drier": (0.25, "indoor"), "toothbrush": (0.19, "indoor"),
    "candle": (0.15, "indoor"), "lamp": (0.5, "indoor"), "guitar": (1.0, "indoor"),
    "gift box": (0.25, "indoor"), "present": (0.25, "indoor"), "box": (0.3, "any"),
}

SIZE_PRIORS: dict[str, float] = {name: size for name, (size, _) in _PRIORS.items()}


# ---------------------------------------------------------------- class look-up
def _canonical_class(class_name: str) -> str | None:
    """The table key for a class name: exact, then without leading words, then singular.

    "Red_Backpack" -> "backpack", "rc car" stays "rc car" (not "car"), "dogs" -> "dog".
    """
    words = class_name.lower().replace("_", " ").replace("-", " ").split()
    for start in range(len(words)):  # longest suffix first: "toy car" before "car"
        phrase = " ".join(words[start:])
        for candidate in (phrase, *_singulars(phrase)):
            if candidate in _PRIORS:
                return candidate
    return None


def _singulars(phrase: str) -> list[str]:
    forms = []
    if phrase.endswith("ies"):
        forms.append(phrase[:-3] + "y")
    if phrase.endswith("es"):
        forms.append(phrase[:-2])
    if phrase.endswith("s") and not phrase.endswith("ss"):
        forms.append(phrase[:-1])
    return forms


def real_world_size(class_name: str) -> float | None:
    """Typical real-world height (metres) of a class, or None when the class is unknown."""
    key = _canonical_class(class_name)
    return SIZE_PRIORS[key] if key else None


def class_setting(class_name: str) -> str:
    """The setting a class prefers: "indoor", "outdoor", or "any" (also for an unknown class)."""
    key = _canonical_class(class_name)
    return _PRIORS[key][1] if key else "any"


def size_ratios(class_names: list[str], config: LayoutConfig) -> list[float]:
    """Relative sizes: largest 1.0, others clamped to ``config.size_ratio_range``.

    The default range [0, 1] keeps the real-world ratios; [0.4, 1.0] is the paper's (its LLM
    prompt asks for it). Unknown classes get ``config.default_size_ratio``; when no class is
    known there is no reference to compare with, so all objects count as equally large (1.0).
    """
    low, high = config.size_ratio_range
    sizes = [real_world_size(name) for name in class_names]
    known = [s for s in sizes if s is not None]
    if not known:
        return [high] * len(class_names)
    largest = max(known)
    return [config.default_size_ratio if s is None else min(high, max(low, s / largest)) for s in sizes]


def min_box_area(n_objects: int, canvas: int) -> float:
    """The paper's minimum box area on a square canvas: (H/5)^2 up to 3 objects, /6 for 4, /8 for 5+."""
    if n_objects < 1:
        raise ValueError(f"need at least one object, got {n_objects}")
    divisor = 5 if n_objects <= 3 else 6 if n_objects == 4 else 8
    return (canvas / divisor) ** 2

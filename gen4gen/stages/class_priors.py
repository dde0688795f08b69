"""Class-prior regularisation images for Custom Diffusion (``[training] class_priors``).

"none": no prior preservation. A folder: ``<folder>/<class>/*.png|jpg`` per class of the run's
concepts. "generate": ``num_class_images`` per class drawn from the base model with "a photo of a
<class>" and kept under ``build/class_priors/<base model>/<class>/`` for every later run (the
Custom Diffusion example generates and caches them the same way).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def class_prompt(class_name: str) -> str:
    return f"a photo of a {class_name}"


def class_prior_examples(config, tset, base_model: Path, device, log=print) -> list:
    """Prior images for the classes of ``tset``'s concepts, interleaved class by class."""
    from ..config import resolve_path
    from ..custom_diffusion import TrainingExample

    mode = config.training.class_priors
    if mode == "none":
        return []
    classes = sorted(set(tset.class_names.values()))
    per_class = max(1, config.training.num_class_images // len(classes))
    if mode == "generate":
        model_id = hashlib.sha256((Path(base_model) / "model_index.json").read_bytes()
                                  + str(base_model).encode()).hexdigest()[:12]
        root = config.paths.build / "class_priors" / model_id
        _generate_missing(root, classes, per_class, base_model, device, config, log)
    else:
        root = resolve_path(mode)
    found: dict[str, list[Path]] = {}
    for class_name in classes:
        folder = root / class_name
        images = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not images:
            raise ValueError(f"[training] class_priors: no images for class {class_name!r} in {folder} "
                             f"(expected <folder>/<class>/*.png or .jpg)")
        found[class_name] = images[:per_class]
    examples = []
    for i in range(per_class):  # interleaved, so the first num_class_images hold every class
        examples += [TrainingExample(images[i], class_prompt(c)) for c, images in found.items() if i < len(images)]
    return examples


def _generate_missing(root: Path, classes: list[str], per_class: int, base_model: Path, device, config, log) -> None:
    """Draw the images each class still lacks (seeded by class and index: a resumed cache matches)."""
    from ..custom_diffusion import sample_images
    from ..io import atomic_write_bytes

    missing = {c: [i for i in range(per_class) if not (root / c / f"{i:04d}.png").is_file()] for c in classes}
    if not any(missing.values()):
        return
    import io

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base_model), local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    for class_name, indices in missing.items():
        if not indices:
            continue
        log(f"class priors: generating {len(indices)} images of {class_name!r} with the base model")
        base_seed = int(hashlib.sha256(class_name.encode()).hexdigest()[:8], 16)
        images = sample_images(pipe, [class_prompt(class_name)] * len(indices), [base_seed + i for i in indices],
                               steps=config.sampling.num_inference_steps, guidance=config.sampling.guidance_scale,
                               resolution=config.training.resolution, batch_size=config.sampling.batch_size)
        for index, image in zip(indices, images):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(root / class_name / f"{index:04d}.png", buffer.getvalue())

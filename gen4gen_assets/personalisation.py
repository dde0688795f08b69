"""The personalisation loop's assets: a Custom Diffusion model per training run, and its samples.

Neither is part of `gen4gen materialize` or the sensor's runs: training costs GPU hours, so it
runs when asked (`gen4gen personalise`, or a launch from the UI), and `gen4gen plan` lists the
runs whose training set changed.
"""
from dagster import MetadataValue, asset

from gen4gen.config import PROJECT_ROOT
from gen4gen.personalisation_state import code_version
from gen4gen.stages.personalisation import build_model, build_samples

from .concepts import concept_images
from .factory import TRANSIENT_RETRIES, build_run_partition
from .mycanvas import mycanvas
from .partitions import training_run_partitions


def _train(config, registry, run, out_dir, log):
    return build_model(config, registry, run, out_dir, PROJECT_ROOT, log)


def _describe_model(result, folder) -> dict:
    manifest = result.manifest
    return {
        "training_images": MetadataValue.int(manifest["images"]),
        "steps": MetadataValue.int(manifest["steps"]),
        "first_loss": MetadataValue.float(manifest["first_loss"]),
        "last_loss": MetadataValue.float(manifest["last_loss"]),
        "seconds_per_step": MetadataValue.float(round(manifest["seconds_per_step"], 4)),
        "learning_rate": MetadataValue.float(manifest["learning_rate"]),
        "tokens": MetadataValue.json(manifest["tokens"]),
        "training_set_digest": MetadataValue.text(manifest["training_set_digest"]),
        "loss_curve": MetadataValue.path(str(folder / "loss_curve.png")),
        "loss_curve_plot": MetadataValue.md(f"![loss curve]({(folder / 'loss_curve.png').as_uri()})"),
    }


@asset(group_name="personalisation", partitions_def=training_run_partitions, deps=[mycanvas, concept_images],
       code_version=code_version("personalised_models"),
       kinds={"pytorch", "diffusers"}, pool="gpu", retry_policy=TRANSIENT_RETRIES,
       required_resource_keys={"settings", "lineage", "dvc"},
       description="Custom Diffusion weights and new-token embeddings of one training run (plain diffusers "
                   "load_attn_procs / load_textual_inversion), its training set manifest, log and loss curve.")
def personalised_models(context):
    return build_run_partition(context, "personalised_models", _train, _describe_model)


def _sample(config, registry, run, out_dir, log):
    return build_samples(config, registry, run, config.paths.personalised(run.name), out_dir, PROJECT_ROOT, log)


def _describe_samples(result, folder) -> dict:
    manifest = result.manifest
    return {"images": MetadataValue.int(manifest["images"]), "prompts": MetadataValue.int(manifest["prompts"]),
            "held_out_prompts": MetadataValue.int(manifest["held_out_prompts"]),
            "prompts_file": MetadataValue.path(str(folder / "prompts.jsonl"))}


@asset(group_name="personalisation", partitions_def=training_run_partitions, deps=[personalised_models],
       code_version=code_version("generated_images"),
       kinds={"pytorch", "diffusers", "image"}, pool="gpu", retry_policy=TRANSIENT_RETRIES,
       required_resource_keys={"settings", "lineage", "dvc"},
       description="Samples of a trained model for training-style and held-out prompts, with the prompts.jsonl "
                   "that evaluation_report scores.")
def generated_images(context):
    return build_run_partition(context, "generated_images", _sample, _describe_samples)

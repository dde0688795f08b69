"""Jobs group assets that share a partitioning; `gen4gen materialize` and the sensor run them in order."""
from dagster import define_asset_job

from .captioning import captions
from .composition import composed_images
from .concepts import concept_images
from .layouts import layouts
from .mycanvas import mycanvas
from .personalisation import generated_images, personalised_models
from .recolouring import recoloured_images
from .report import evaluation_report
from .segmentation import segmented_foregrounds

catalogue_job = define_asset_job("catalogue_concepts", selection=[concept_images])
segment_job = define_asset_job("segment_concepts", selection=[segmented_foregrounds])
compositions_job = define_asset_job("build_compositions", selection=[layouts, composed_images, recoloured_images, captions])
publish_job = define_asset_job("publish_dataset", selection=[mycanvas, evaluation_report])
# Not run by `gen4gen materialize` or the sensor: `gen4gen personalise` (or the UI) trains when asked.
personalise_job = define_asset_job("personalise", selection=[personalised_models, generated_images])
report_job = define_asset_job("evaluation_report_only", selection=[evaluation_report])

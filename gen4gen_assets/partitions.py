"""Dynamic partitions: one per concept, one per composition (``cat+coffee_cup+flower``).

The ``concept_images`` asset registers them as it discovers concept folders.
"""
from dagster import DynamicPartitionsDefinition

concept_partitions = DynamicPartitionsDefinition(name="concepts")
composition_partitions = DynamicPartitionsDefinition(name="compositions")
# One per `[[training.runs]]` entry; `gen4gen personalise` registers the configured ones.
training_run_partitions = DynamicPartitionsDefinition(name="training_runs")

"""The Gen4Gen asset graph: one module per stage, thin asset functions over ``gen4gen.stages``."""

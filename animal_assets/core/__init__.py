"""Dagster-free core of animal-assets.

Every step of the pipeline (read and validate, embed, score outliers, clean labels, split,
balance, train, evaluate) is a plain function here, usable from a script or a notebook and
from a machine without dagster installed. The Dagster assets in :mod:`animal_assets.assets`
only read config, call these functions and attach metadata.
"""

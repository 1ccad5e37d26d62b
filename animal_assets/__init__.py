"""animal-assets: a Dagster asset graph that cleans a noisy labelled image dataset.

The code location is :mod:`animal_assets.definitions`; the dagster-free core lives in
:mod:`animal_assets.core`.
"""

"""Generated data with a known truth: the built-in demo dataset (:mod:`.demo`), known noise
injected into clean labelled images (:mod:`.noise`) and ground-truth benchmarks built from a
folder of class images (:mod:`.benchmark`). The pipeline reads none of it to clean; the truth
files only score what it did (:mod:`animal_assets.core.truth`)."""

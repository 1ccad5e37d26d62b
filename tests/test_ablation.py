"""Ablation: recipes built from the graph's outputs, trained and scored on one fixed set."""

import numpy as np
import pandas as pd
import pytest

from animal_assets.core.ablation import AblationConfig, markdown, recipe_rows


def decisions_table():
    # ids a..h; c and d are byte-identical copies; b is OOD; e relabelled; f dropped; h is a copy
    # of the validation image g.
    return pd.DataFrame({
        "id": list("abcdefgh"),
        "given": [0, 1, 1, 1, 0, 1, 0, 0],
        "label": [0, -1, 1, -1, 1, -1, 0, -1],
        "reason": ["", "ood", "", "duplicate", "label_issue", "label_issue", "", "duplicate"],
        "dup_group": [0, 1, 2, 2, 3, 4, 5, 5],
    })


def test_recipes_follow_the_decisions_and_leave_out_validation_images():
    sets = recipe_rows(decisions_table(), val_sources={"g"})
    ids = np.array(list("abcdefgh"))
    assert list(ids[sets["raw"][0]]) == list("abcdef")  # g and its copy h are held out
    assert list(sets["raw"][1]) == [0, 1, 1, 1, 0, 1]
    assert list(ids[sets["ood_removed"][0]]) == list("acdef")
    assert list(ids[sets["labels_corrected"][0]]) == list("ace")
    assert list(sets["labels_corrected"][1]) == [0, 1, 1]  # e carries its new label


@pytest.mark.parametrize("bad", [{"recipes": ()}, {"recipes": ("raw", "magic")}, {"seeds": ()},
                                 {"epochs": 0}])
def test_params_reject_bad_values(bad):
    with pytest.raises(ValueError, match="ablation.py"):
        AblationConfig(**bad)


def test_markdown_has_one_row_per_recipe():
    table = markdown({"raw": {"n_train": 10, "seeds": 2, "val_balanced_accuracy": {"mean": 0.5, "std": 0.1}},
                      "full": {"n_train": 12, "seeds": 2, "val_balanced_accuracy": {"mean": 0.75, "std": 0.0}}})
    lines = table.splitlines()
    assert len(lines) == 4 and "| raw | 10 | 2 | 0.500 ± 0.100 |" in lines and "0.750 ± 0.000" in lines[3]


def test_one_seed_gives_no_spread_in_the_table():
    table = markdown({"raw": {"n_train": 10, "seeds": 1, "val_balanced_accuracy": {"mean": 0.5, "std": 0.0}}})
    assert table.splitlines()[2] == "| raw | 10 | 1 | 0.500 |"


def toy_run(n: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """n random images kept with alternating labels 0/1, each its own duplicate group."""
    images = np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    decisions = pd.DataFrame({"id": [f"i{j}" for j in range(n)], "given": np.arange(n) % 2,
                              "label": np.arange(n) % 2, "reason": [""] * n, "dup_group": np.arange(n)})
    return images, decisions


def test_ablation_logs_every_epoch_of_every_run():
    from animal_assets.core.ablation import run_ablation
    from animal_assets.core.train import TrainConfig

    images, decisions = toy_run(24, seed=0)
    lines = []
    result = run_ablation(
        images=images, decisions=decisions, val_sources={"i0", "i1"}, val_images=images[:2],
        val_labels=np.array([0, 1]), full_images=images[2:], full_labels=np.arange(22) % 2,
        num_classes=2, train_config=TrainConfig(epochs=2, batch_size=8, device="cpu"),
        params=AblationConfig(recipes=["raw", "full"]), log=lines.append,
    )
    assert [r["n_train"] for r in result["runs"]] == [22, 22]
    assert sum("epoch 2/2, loss" in line for line in lines) == 2, lines


def test_full_recipe_at_the_trainer_seed_is_the_given_model_not_a_new_run():
    from animal_assets.core import train
    from animal_assets.core.ablation import run_ablation
    from animal_assets.core.train import TrainConfig

    images, decisions = toy_run(20, seed=1)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", precision="fp32")
    full_x, full_y = images[2:], np.arange(18) % 2
    main_model = train.train_resnet34(full_x, full_y, num_classes=2, config=config).model
    lines = []
    result = run_ablation(
        images=images, decisions=decisions, val_sources={"i0", "i1"}, val_images=images[:2],
        val_labels=np.array([0, 1]), full_images=full_x, full_labels=full_y, num_classes=2,
        train_config=config, params=AblationConfig(recipes=["full"], seeds=[0, 1]),
        full_model=main_model, log=lines.append,
    )
    seed0, seed1 = result["runs"]
    assert (seed0["seed"], seed0["reused"], seed0["seconds"]) == (0, True, 0.0)
    assert (seed1["seed"], seed1["reused"]) == (1, False) and seed1["seconds"] > 0
    assert sum("training on" in line for line in lines) == 1  # only seed 1 was trained
    expected = train.predict(main_model, images[:2], device="cpu")
    assert seed0["val_balanced_accuracy"] == (0.5 * ((expected[0] == 0) + (expected[1] == 1)))
    # other epochs than the main model's: nothing is reused
    again = run_ablation(
        images=images, decisions=decisions, val_sources={"i0", "i1"}, val_images=images[:2],
        val_labels=np.array([0, 1]), full_images=full_x, full_labels=full_y, num_classes=2,
        train_config=config, params=AblationConfig(recipes=["full"], seeds=[0], epochs=2),
        full_model=main_model, log=lambda line: None,
    )
    assert again["runs"][0]["reused"] is False

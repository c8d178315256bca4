"""Label conventions defined once (pengwin_demo.labels) and what depends on them."""

import json

import numpy as np
import pytest

from pengwin_demo.labels import (
    ABBC_CLASSES,
    ABBC_NAMES,
    ANATOMY_CLASSES,
    BONES,
    MAX_LABEL,
    Abbc,
    Anatomy,
    anatomy_from_fragments,
    bone_of_label,
    bone_of_labels,
    first_label,
    rank_in_bone,
)
from pengwin_demo.models import bundled_model_path


@pytest.mark.parametrize("kind, classes", [("anatomy", ANATOMY_CLASSES), ("abbc", ABBC_CLASSES)])
def test_the_bundled_models_were_trained_on_these_classes(kind, classes):
    dataset = json.loads((bundled_model_path(kind) / "dataset.json").read_text())
    assert dataset["labels"] == classes


def test_names_and_ids_come_from_the_enums():
    assert BONES == {1: "sacrum", 2: "left_hip", 3: "right_hip"}
    assert ABBC_NAMES == {0: "background", 1: "boundary", 2: "core", 3: "border"}
    assert [Anatomy(i).name for i in range(4)] == ["BACKGROUND", "SACRUM", "LEFT_HIP", "RIGHT_HIP"]
    assert Abbc.CORE == 2 and Abbc["BORDER"] == 3


def test_bone_of_labels_agrees_with_the_scalar_rule_and_the_anatomy_map():
    labels = np.arange(1, 31)
    assert bone_of_labels(labels).tolist() == [bone_of_label(v) for v in labels]
    assert np.array_equal(bone_of_labels(labels), anatomy_from_fragments(labels.astype(np.uint8)))


def test_pengwin_ids_run_1_to_30_ten_per_bone_largest_first():
    assert MAX_LABEL == 30
    assert [first_label(b) for b in BONES] == [1, 11, 21]
    assert [bone_of_label(v) for v in (0, 1, 10, 11, 20, 21, 30)] == [0, 1, 1, 2, 2, 3, 3]
    assert [rank_in_bone(v) for v in (1, 10, 11, 12, 21, 30)] == [1, 10, 1, 2, 1, 10]
    with pytest.raises(ValueError, match="0-30"):
        bone_of_label(31)

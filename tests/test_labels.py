"""Label conventions defined once (pengwin_demo.labels) and what depends on them."""

import json

import numpy as np
import pytest

from pengwin_demo.labels import (
    ABBC_CLASSES,
    ABBC_NAMES,
    ANATOMY_CLASSES,
    BONES,
    Abbc,
    Anatomy,
    anatomy_from_fragments,
    bone_of_label,
    bone_of_labels,
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

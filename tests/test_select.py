"""Whiteness scoring and the white-subset selection."""
import json

import numpy as np
import pytest

from pegasus.data import ImageDataset
from pegasus.rundir import read_selection
from pegasus.select import SelectionError, read_ids, select_white, whiteness, write_selection


def scene(background, centre, size=32):
    """uint8 [size, size, 3]: a flat background with a square of another colour in the centre."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = background
    img[size // 4 : size - size // 4, size // 4 : size - size // 4] = centre
    return img


WHITE_HORSE = scene((40, 90, 30), (245, 245, 240))  # white animal on grass
WHITE_SKY = scene((235, 240, 250), (60, 50, 40))  # dark bird on a white sky
SNOW = scene((250, 250, 250), (250, 250, 250))  # all white
RED_BLOB = scene((20, 20, 20), (250, 30, 30))  # bright but saturated


def dataset(images, labels, classes=("airplane", "Bird", "HORSE")):
    return ImageDataset(np.stack(images), np.array(labels, dtype=np.int64), list(classes), "image-folder", "synthetic")


def test_white_animal_beats_white_sky_snow_and_colour():
    s = whiteness(np.stack([WHITE_HORSE, WHITE_SKY, SNOW, RED_BLOB]))
    assert s[0] > 0.6 and s[0] == s.max()
    assert s[1] < 0 and abs(s[2]) < 1e-9 and s[3] < 0.15


def test_select_top_and_case_insensitive_classes(tmp_path):
    ds = dataset([WHITE_SKY, WHITE_HORSE, RED_BLOB, SNOW, WHITE_HORSE, WHITE_SKY], [1, 1, 1, 2, 2, 0])
    birds, horses = select_white(ds, birds=2, horses=1)
    assert birds.ids == [1, 2] and horses.ids == [4]
    assert birds.scores[0] == pytest.approx(whiteness(WHITE_HORSE[None])[0])
    record = write_selection(tmp_path, ds, "train", (birds, horses))
    assert read_selection(tmp_path) == record == json.loads((tmp_path / "selection.json").read_text())
    assert record["birds"]["ids"] == [1, 2] and (tmp_path / "selection.png").stat().st_size > 0
    # ids given by the user win, in the order given
    birds, horses = select_white(ds, bird_ids=[0, 2], horse_ids=[3])
    assert birds.ids == [0, 2] and horses.ids == [3]


def test_selection_errors(tmp_path):
    ds = dataset([WHITE_HORSE, WHITE_SKY], [1, 2])
    with pytest.raises(SelectionError, match=r"no 'horse' class \(case-insensitive\); its classes are \['cat', 'bird'\]"):
        select_white(dataset([WHITE_HORSE, WHITE_SKY], [0, 1], classes=("cat", "bird")))
    with pytest.raises(SelectionError, match=r"bird ids \[7\] are out of range: the split has 2 images"):
        select_white(ds, bird_ids=[0, 7])
    with pytest.raises(SelectionError, match=r"horse ids \[0\] are not 'HORSE' images"):
        select_white(ds, horse_ids=[0])
    with pytest.raises(SelectionError, match="the selection of birds is empty"):
        select_white(ds, bird_ids=[])
    with pytest.raises(SelectionError, match="the selection of horses is empty"):
        select_white(dataset([WHITE_HORSE], [1]))  # a horse class with no images
    (tmp_path / "ids.txt").write_text("3, 4  # white ones\n5\n")
    assert read_ids(tmp_path / "ids.txt") == [3, 4, 5]
    (tmp_path / "bad.txt").write_text("3 x\n")
    with pytest.raises(SelectionError, match="bad.txt: expected integer ids"):
        read_ids(tmp_path / "bad.txt")
    with pytest.raises(SelectionError, match=r"selection.json is missing: run `pegasus select --run-dir "):
        read_selection(tmp_path)

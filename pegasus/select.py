"""Stage 2, picking white birds and white horses: a whiteness score, top-N selection, a contact sheet.

The score is `pegasus.images.whiteness` (bright, unsaturated pixels in the centre minus the border).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from pegasus.data import ImageDataset
from pegasus.images import make_grid, save_image, white_centre, whiteness
from pegasus.models.classifier import Classifier, predict
from pegasus.rundir import CONTACT_SHEET, SelectionError, check_ids, class_index, write_selection as write_selection_record

__all__ = ["DEFAULT_PICKS", "Selection", "SelectionError", "contact_sheet", "pick_class", "read_ids", "select_white", "whiteness", "write_selection"]
# Defaults from CIFAR-10 train (5000 images per class; scores measured: median -0.02 bird, -0.08
# horse; 99th percentile 0.29 and 0.35). On the contact sheet of the top 48, the birds are white
# or pale through rank ~24 (score >= 0.33), then ostrich heads and blue birds creep in; the horses
# are white through rank 48 (score >= 0.36), so 32 keeps a margin. 24 x 32 = 768 pairs, x 11
# alphas = 8448 latent grids for the prior.
DEFAULT_PICKS = {"bird": 24, "horse": 32}


@dataclass
class Selection:
    """Picks of one class: ids index the split's images; scores are their whiteness; confidence,
    when a classifier chose them, its probability of the class for each."""

    name: str
    ids: list[int]
    scores: list[float]
    confidence: list[float] | None = None


RECOGNISABLE = 0.5
"""--recognisable: the classifier's probability of the class a pick needs at least (see pick_class)."""
CONTRAST = 0.2
"""--recognisable: the whiteness score a pick needs at least: a white subject, not a white sky."""


def pick_class(ds: ImageDataset, name: str, n: int | None, ids: list[int] | None, classifier: Classifier | None = None) -> Selection:
    """The `n` whitest images of class `name` (default DEFAULT_PICKS[name]), or the given `ids`
    after checking they are in range and of that class.

    With a classifier, white *and* recognisable: of the images it gives P(class) >= RECOGNISABLE
    and whose whiteness score is >= CONTRAST, the n with the whitest centre (`white_centre`),
    then, if there are fewer than n such, the others in the same order. On CIFAR-10 (auxiliary
    classifier) that leaves 114 birds and 339 horses to choose from; the whitest-centred 24 birds
    are white-breasted birds, doves, gulls, an owl, where the 24 whitest by score alone are
    mostly white blobs (the evaluation classifier's P(bird) 0.34 against 0.68)."""
    label = class_index(ds, name)
    members = np.flatnonzero(ds.labels == label)
    if ids is not None:
        chosen = np.asarray(check_ids(ds, name, list(ids)), dtype=np.int64)
    else:
        if n is not None and n < 1:
            raise SelectionError(f"{name}s should be >= 1, got {n}")
        n = n or DEFAULT_PICKS[name]
        scores = whiteness(ds.images[members])
        if classifier is None:
            # Stable sort on -score: equal scores keep id order, so the choice is deterministic.
            chosen = members[np.argsort(-scores, kind="stable")[:n]]
        else:
            sure = _confidence(classifier, ds, members, name)
            eligible = (sure >= RECOGNISABLE) & (scores >= CONTRAST)
            centre = white_centre(np.asarray(ds.images[members]))
            chosen = members[np.lexsort((-centre, ~eligible))[:n]]
    if len(chosen) == 0:
        raise SelectionError(f"{ds.source}: the selection of {name}s is empty")
    confidence = None if classifier is None else [float(p) for p in _confidence(classifier, ds, chosen, name)]
    return Selection(name, [int(i) for i in chosen], [float(s) for s in whiteness(ds.images[chosen])], confidence)


def _confidence(classifier: Classifier, ds: ImageDataset, ids: np.ndarray, name: str) -> np.ndarray:
    """The classifier's probability that each image of `ids` is a `name`."""

    return predict(classifier, np.asarray(ds.images[ids]))[:, classifier.class_index(name)].numpy()


def read_ids(path: str | os.PathLike) -> list[int]:
    """Integer ids from a text file: separated by whitespace or commas, '#' starts a comment."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SelectionError(f"{path}: cannot read the ids file ({e})") from e
    tokens = [t for line in text.splitlines() for t in line.split("#")[0].replace(",", " ").split()]
    try:
        return [int(t) for t in tokens]
    except ValueError as e:
        raise SelectionError(f"{path}: expected integer ids separated by spaces, commas or newlines ({e})") from e


def select_white(
    ds: ImageDataset,
    birds: int | None = None,
    horses: int | None = None,
    bird_ids: list[int] | None = None,
    horse_ids: list[int] | None = None,
    classifier: Classifier | None = None,
) -> tuple[Selection, Selection]:
    """The `birds` whitest birds and `horses` whitest horses of `ds` (defaults: DEFAULT_PICKS),
    or the given ids (checked: in range and of the right class); with a classifier, white and
    recognisable ones (`pick_class`). Raises SelectionError."""
    return pick_class(ds, "bird", birds, bird_ids, classifier), pick_class(ds, "horse", horses, horse_ids, classifier)


def contact_sheet(ds: ImageDataset, picks: list[Selection], ncol: int = 8) -> np.ndarray:
    """uint8 [H', W', 3]: one titled section per Selection, each pick scaled to ~96 px with
    'id score' printed under it."""
    h, w = ds.image_size
    scale = max(1, 96 // max(h, w))
    th, tw, caption, pad = h * scale, w * scale, 12, 4
    sections = []
    for sel in picks:
        tiles = np.stack([np.pad(ds.images[i].repeat(scale, 0).repeat(scale, 1), ((0, caption), (0, 0), (0, 0)),
                                 constant_values=255) for i in sel.ids])
        grid = make_grid(torch.from_numpy(tiles).permute(0, 3, 1, 2), nrow=ncol, pad=pad)
        img = Image.fromarray(np.pad(grid, ((14, 0), (0, 0), (0, 0)), constant_values=255))
        draw = ImageDraw.Draw(img)
        sure = sel.confidence or [None] * len(sel.ids)
        what = "id, whiteness" + (", P(class)" if sel.confidence else "")
        draw.text((pad, 2), f"{sel.name}s: {len(sel.ids)} picks ({what})", fill=(0, 0, 0))
        for k, (i, s, p) in enumerate(zip(sel.ids, sel.scores, sure)):
            r, c = divmod(k, ncol)
            label = f"{i} {s:.2f}" + ("" if p is None else f" {p:.2f}")
            draw.text((pad + c * (tw + pad), 14 + pad + r * (th + caption + pad) + th), label, fill=(0, 0, 0))
        sections.append(np.asarray(img))
    width = max(s.shape[1] for s in sections)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sections])


def write_selection(run_dir: str | os.PathLike, ds: ImageDataset, split: str, picks: tuple[Selection, Selection]) -> dict[str, Any]:
    """Write RUN_DIR/selection.json (data path, split, ids and scores) and selection.png."""
    record = {
        # As given (ds.source keeps the user's spelling): a run records no machine's absolute layout
        # unless it was given one, and pegasus.pretrained.export_run ships the data set by name.
        "data": ds.source,
        "split": split,
        "score": "min(R,G,B)/255 averaged over the central square minus over the border ring (pegasus.select)",
        **{f"{s.name}s": {"ids": s.ids, "scores": s.scores, **({"confidence": s.confidence} if s.confidence else {})} for s in picks},
    }
    write_selection_record(run_dir, record)
    save_image(contact_sheet(ds, list(picks)), Path(run_dir) / CONTACT_SHEET)
    return record

"""Picking white birds and white horses: a whiteness score, top-N selection, a contact sheet.

The whiteness score of an image (uint8 [H, W, 3]) is

    w(p)  = min(R, G, B) / 255                  per pixel: HSV value x (1 - saturation), so only
                                                pixels that are both bright and grey score high
    C     = mean of w over the centre           the central square, rows and columns H/4 .. 3H/4
                                                (a quarter of the area: where the animal sits)
    B     = mean of w over the border           the ring of width max(1, H/8) along the edges
    score = C - B                               in [-1, 1]

A white animal on a darker background scores high (C near 1, B low); a white sky or snow field
scores near 0 or below, because it is as white at the border as in the centre (and a dark bird
in front of it lowers C).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from pegasus.checkpoint import atomic_write_text
from pegasus.data import ImageDataset
from pegasus.data._dataset import SPLITS
from pegasus.images import make_grid, save_png

SELECTION, CONTACT_SHEET = "selection.json", "selection.png"
# Defaults from CIFAR-10 train (5000 images per class; scores measured: median -0.02 bird, -0.08
# horse; 99th percentile 0.29 and 0.35). On the contact sheet of the top 48, the birds are white
# or pale through rank ~24 (score >= 0.33), then ostrich heads and blue birds creep in; the horses
# are white through rank 48 (score >= 0.36), so 32 keeps a margin. 24 x 32 = 768 pairs, x 11
# alphas = 8448 latent grids for the prior.
DEFAULT_PICKS = {"bird": 24, "horse": 32}


class SelectionError(ValueError):
    """No bird or horse class, an empty selection, or ids that do not fit the data set."""


def whiteness(images: np.ndarray) -> np.ndarray:
    """Whiteness score (module docstring) of uint8 images [N, H, W, 3] -> float64 [N] in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"whiteness expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    n, h, w, _ = images.shape
    scores = np.empty(n, dtype=np.float64)
    ring_h, ring_w = max(1, h // 8), max(1, w // 8)
    border = np.zeros((h, w), dtype=bool)
    border[:ring_h], border[-ring_h:], border[:, :ring_w], border[:, -ring_w:] = True, True, True, True
    for start in range(0, n, 4096):  # bounded memory on 100k-image data sets
        white = images[start : start + 4096].min(axis=3).astype(np.float64) / 255
        centre = white[:, h // 4 : h - h // 4, w // 4 : w - w // 4].mean(axis=(1, 2))
        scores[start : start + len(white)] = centre - white[:, border].mean(axis=1)
    return scores


def class_index(ds: ImageDataset, name: str) -> int:
    """Label of the class called `name` (case-insensitive)."""
    matches = [k for k, c in enumerate(ds.classes) if c.lower() == name.lower()]
    if not matches:
        raise SelectionError(f"{ds.source}: no {name!r} class (case-insensitive); its classes are {ds.classes}")
    return matches[0]


@dataclass
class Selection:
    """Picks of one class: ids index the split's images; scores are their whiteness."""

    name: str
    ids: list[int]
    scores: list[float]


def pick_class(ds: ImageDataset, name: str, n: int | None, ids: list[int] | None) -> Selection:
    """The `n` whitest images of class `name` (default DEFAULT_PICKS[name]), or the given `ids`
    after checking they are in range and of that class."""
    label = class_index(ds, name)
    members = np.flatnonzero(ds.labels == label)
    if ids is not None:
        chosen = np.asarray(ids, dtype=np.int64)
        bad = [int(i) for i in chosen if not 0 <= i < len(ds)]
        if bad:
            raise SelectionError(f"{name} ids {bad[:5]} are out of range: the split has {len(ds)} images (ids 0..{len(ds) - 1})")
        wrong = [int(i) for i in chosen if ds.labels[i] != label]
        if wrong:
            raise SelectionError(f"{name} ids {wrong[:5]} are not {ds.classes[label]!r} images")
    else:
        if n is not None and n < 1:
            raise SelectionError(f"{name}s should be >= 1, got {n}")
        scores = whiteness(ds.images[members])
        # Stable sort on -score: equal scores keep id order, so the choice is deterministic.
        chosen = members[np.argsort(-scores, kind="stable")[: n or DEFAULT_PICKS[name]]]
    if len(chosen) == 0:
        raise SelectionError(f"{ds.source}: the selection of {name}s is empty")
    return Selection(name, [int(i) for i in chosen], [float(s) for s in whiteness(ds.images[chosen])])


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
) -> tuple[Selection, Selection]:
    """The `birds` whitest birds and `horses` whitest horses of `ds` (defaults: DEFAULT_PICKS),
    or the given ids (checked: in range and of the right class). Raises SelectionError."""
    return pick_class(ds, "bird", birds, bird_ids), pick_class(ds, "horse", horses, horse_ids)


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
        draw.text((pad, 2), f"{sel.name}s: {len(sel.ids)} picks (id, whiteness)", fill=(0, 0, 0))
        for k, (i, s) in enumerate(zip(sel.ids, sel.scores)):
            r, c = divmod(k, ncol)
            draw.text((pad + c * (tw + pad), 14 + pad + r * (th + caption + pad) + th), f"{i} {s:.2f}", fill=(0, 0, 0))
        sections.append(np.asarray(img))
    width = max(s.shape[1] for s in sections)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sections])


def write_selection(run_dir: str | os.PathLike, ds: ImageDataset, split: str, picks: tuple[Selection, Selection]) -> dict[str, Any]:
    """Write RUN_DIR/selection.json (data path, split, ids and scores) and selection.png."""
    run_dir = Path(run_dir)
    record = {
        "data": str(Path(ds.source).resolve()),
        "split": split,
        "score": "min(R,G,B)/255 averaged over the central square minus over the border ring (pegasus.select)",
        **{f"{s.name}s": {"ids": s.ids, "scores": s.scores} for s in picks},
    }
    atomic_write_text(run_dir / SELECTION, json.dumps(record, indent=2))
    save_png(contact_sheet(ds, list(picks)), run_dir / CONTACT_SHEET)
    return record


def read_selection(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN_DIR/selection.json as written by `write_selection` (or edited by hand)."""
    path = Path(run_dir) / SELECTION
    if not path.is_file():
        raise SelectionError(f"{path} is missing: run `pegasus select --run {run_dir} --data PATH` first")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise SelectionError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(record, dict):
        raise SelectionError(f"{path}: not a selection file, expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("data", "split", "birds", "horses") if k not in record]
    if missing:
        raise SelectionError(f"{path}: not a selection file, it lacks {missing}")
    if not isinstance(record["data"], str):
        raise SelectionError(f"{path}: \"data\" should be the data set's path, got {record['data']!r}")
    if record["split"] not in SPLITS:
        raise SelectionError(f"{path}: \"split\" should be one of {', '.join(SPLITS)}, got {record['split']!r}")
    for key in ("birds", "horses"):
        ids = record[key].get("ids") if isinstance(record[key], dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise SelectionError(f"{path}: \"{key}\" should be {{\"ids\": [integer, ...]}}, got {json.dumps(record[key])[:80]}")
    return record

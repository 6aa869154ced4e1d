"""The run directory's layout: the name of every file a run holds, and every loader and saver of one.

  file                           written by     holds
  config.json                    train-vqvae    VQ-VAE, data and training settings, format stamp,
                                                number of processes (written first; --resume reads it)
  checkpoint.safetensors         train-vqvae    model + optimizer + step + RNG (.prev: the one before)
  metrics.jsonl                  train-vqvae    one JSON record per logged step
  vqvae.safetensors              train-vqvae    final weights (parameters and EMA buffers)
  eval.json                      train-vqvae    test MSE on [0, 1] pixels, perplexity, codes in use
  reconstructions.png            train-vqvae    test originals (odd rows) over their reconstructions
  loss_curves.png                train-vqvae    loss, MSE and perplexity against step
  selection.json                 select         data set (as given), split, bird and horse ids, scores
  selection.png                  select         contact sheet of the picks
  latents.safetensors            interpolate    indices int64 [P, A, h, w], alphas float32 [A],
                                                pairs int64 [P, 2] (bird id, horse id), mirrored bool [P];
                                                a two-level run adds top int64 [P, A, h/2, w/2]
  interpolation.png              interpolate    one strip per shown pair: bird, decoded alphas, horse
  class_latents.safetensors      interpolate    (--class-grids) indices int64 [N, h, w] of every bird
                                                and horse of the split and their mirrors, alphas [N]
                                                (and top [N, h/2, w/2] for a two-level run)
  prior_config.json              train-prior    prior, training and latents settings (like config.json)
  prior_checkpoint.safetensors   train-prior    as checkpoint.safetensors
  prior_metrics.jsonl            train-prior    loss (nats), bits, grids_per_s every log_every steps
  prior_best.safetensors         train-prior    the weights of the lowest held-out NLL so far
  prior.safetensors              train-prior    final weights: those of prior_best.safetensors
  prior_eval.json                train-prior    held-out and training NLL per position
  prior_loss_curves.png          train-prior    training cross-entropy against step
  top/prior_*                    train-prior    a two-level run's top prior (--level top), the same
                                 --level top    files; the run's own prior_* files are then its bottom
                                                prior, conditioned on the top grids
  pegasi.png                     sample         the sample grid of the pipeline
  sampling.json                  (by hand)      optional: the run's default sampling settings,
                                                {"temperature": T}; without it T = 1.0
  evaluation.json                evaluate       the quality report (pegasus.evaluate); evaluation.png
                                                its plot, evaluation_samples.png a grid per alpha

A classifier directory (`pegasus train-classifier`; one serves every run of a data set):
  classifier.json, classifier_checkpoint.safetensors, classifier_metrics.jsonl,
  classifier.safetensors, classifier_eval.json (test accuracy), classifier_loss_curves.png

A missing file raises CheckpointError (or SelectionError for the selection) naming the file and
the command that makes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from pegasus.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, load_tensors, load_weights, read_run_config
from pegasus.data import ImageDataset, load_dataset
from pegasus.data._dataset import SPLITS
from pegasus.models import VQVAE, VQVAE2, GatedPixelCNN, PixelCNNConfig, VQVAEConfig, build_vqvae
from pegasus.models.classifier import Classifier, ClassifierConfig

__all__ = [
    "AUX_CLASSIFIER_DIR",
    "CHECKPOINT",
    "CLASSIFIER_CHECKPOINT",
    "CLASSIFIER_CONFIG",
    "CLASSIFIER_CURVES",
    "CLASSIFIER_EVAL",
    "CLASSIFIER_METRICS",
    "CLASSIFIER_WEIGHTS",
    "CLASS_LATENTS",
    "CONFIG",
    "CONTACT_SHEET",
    "DEFAULT_TEMPERATURE",
    "EVALUATION",
    "EVALUATION_PLOT",
    "EVALUATION_SAMPLES",
    "LATENTS",
    "LOSS_CURVES",
    "METRICS",
    "PRIOR_BEST",
    "PRIOR_CHECKPOINT",
    "PRIOR_CONFIG",
    "PRIOR_CURVES",
    "PRIOR_EVAL",
    "PRIOR_LEVELS",
    "PRIOR_METRICS",
    "PRIOR_WEIGHTS",
    "RECONSTRUCTIONS",
    "SAMPLES",
    "SAMPLING",
    "SELECTION",
    "STRIPS",
    "SelectionError",
    "VQVAE_EVAL",
    "VQVAE_WEIGHTS",
    "WEIGHTS_DIR",
    "check_ids",
    "class_index",
    "latents_meta",
    "load_classifier",
    "load_prior",
    "load_vqvae",
    "prior_dir",
    "read_class_latents",
    "read_latents",
    "read_sampling_defaults",
    "read_selection",
    "require",
    "selected_images",
    "vqvae_config",
    "write_class_latents",
    "write_latents",
    "write_sampling_defaults",
    "write_selection",
]

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
"""Where the shipped run lives (installed with the package as package data, pegasus.pretrained),
with the classifier that `pegasus evaluate` scores with (classifier.json, classifier.safetensors)."""
AUX_CLASSIFIER_DIR = WEIGHTS_DIR / "aux"
"""The auxiliary classifier, the one the method itself uses: the VQ-VAE's perceptual loss
(train-vqvae --perceptual) and the recognisable picks (select --recognisable). It is trained like
the evaluation one with another seed, so that `pegasus evaluate` never scores pictures with the
network they were chosen or optimised by."""

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
VQVAE_WEIGHTS = "vqvae.safetensors"
VQVAE_EVAL = "eval.json"
RECONSTRUCTIONS = "reconstructions.png"
LOSS_CURVES = "loss_curves.png"
SELECTION = "selection.json"
CONTACT_SHEET = "selection.png"
LATENTS = "latents.safetensors"
STRIPS = "interpolation.png"
CLASS_LATENTS = "class_latents.safetensors"
PRIOR_CONFIG = "prior_config.json"
PRIOR_CHECKPOINT = "prior_checkpoint.safetensors"
PRIOR_METRICS = "prior_metrics.jsonl"
PRIOR_WEIGHTS = "prior.safetensors"
PRIOR_BEST = "prior_best.safetensors"
PRIOR_EVAL = "prior_eval.json"
PRIOR_CURVES = "prior_loss_curves.png"
SAMPLES = "pegasi.png"
SAMPLING = "sampling.json"
EVALUATION = "evaluation.json"
EVALUATION_PLOT = "evaluation.png"
EVALUATION_SAMPLES = "evaluation_samples.png"
CLASSIFIER_CONFIG = "classifier.json"
CLASSIFIER_CHECKPOINT = "classifier_checkpoint.safetensors"
CLASSIFIER_METRICS = "classifier_metrics.jsonl"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_EVAL = "classifier_eval.json"
CLASSIFIER_CURVES = "classifier_loss_curves.png"

# The command that writes each input a later stage needs, for the "is missing" messages.
_MAKES = {
    CONFIG: "pegasus train-vqvae --data PATH --out {run}",
    VQVAE_WEIGHTS: "pegasus train-vqvae --data PATH --out {run}",
    SELECTION: "pegasus select --run-dir {run} --data PATH",
    LATENTS: "pegasus interpolate --run-dir {run}",
    CLASS_LATENTS: "pegasus interpolate --run-dir {run} --class-grids",
    PRIOR_CONFIG: "pegasus train-prior --run-dir {run}",
    PRIOR_WEIGHTS: "pegasus train-prior --run-dir {run}",
    CLASSIFIER_CONFIG: "pegasus train-classifier --data PATH --out {run}",
    CLASSIFIER_WEIGHTS: "pegasus train-classifier --data PATH --out {run}",
}


class SelectionError(ValueError):
    """No bird or horse class, an empty selection, or ids that do not fit the data set."""


def require(run_dir: str | os.PathLike, *names: str, error: type[Exception] = CheckpointError) -> None:
    """Raise `error` naming the first of `names` missing from RUN_DIR and the command that makes it."""
    run_dir = Path(run_dir)
    for name in names:
        if not (run_dir / name).is_file():
            raise error(f"{run_dir / name} is missing: run `{_MAKES[name].format(run=run_dir)}` first")


# --- VQ-VAE ---------------------------------------------------------------------------------------


def vqvae_config(run_dir: str | os.PathLike) -> VQVAEConfig:
    """The VQ-VAE settings of RUN_DIR/config.json."""
    path = Path(run_dir) / CONFIG
    require(run_dir, CONFIG)
    fields = read_run_config(path, "vqvae")["vqvae"]
    try:
        return VQVAEConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the VQ-VAE config ({e})") from e


def load_vqvae(run_dir: str | os.PathLike, device: str | torch.device = "cpu", backend: str | None = None) -> VQVAE | VQVAE2:
    """The trained VQ-VAE of RUN_DIR (a VQVAE, or a VQVAE2 for a two-level run), in eval mode
    (`backend`: its nearest-code backend)."""
    require(run_dir, CONFIG, VQVAE_WEIGHTS)
    cfg = vqvae_config(run_dir)
    model = build_vqvae(cfg, backend=backend)
    load_weights(Path(run_dir) / VQVAE_WEIGHTS, model, config=cfg.to_dict())
    return model.to(device).eval()


def _codes_if_known(run_dir: Path) -> int | None:
    """K of the run's VQ-VAE, or None when config.json cannot tell."""
    try:
        return int(json.loads((run_dir / CONFIG).read_text())["vqvae"]["codes"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


# --- selection ------------------------------------------------------------------------------------


def class_index(ds: ImageDataset, name: str) -> int:
    """Label of the class called `name` (case-insensitive)."""
    matches = [k for k, c in enumerate(ds.classes) if c.lower() == name.lower()]
    if not matches:
        raise SelectionError(f"{ds.source}: no {name!r} class (case-insensitive); its classes are {ds.classes}")
    return matches[0]


def check_ids(ds: ImageDataset, name: str, ids: list[int]) -> list[int]:
    """`ids` after checking they are in range of `ds` and images of class `name`."""
    label = class_index(ds, name)
    bad = [int(i) for i in ids if not 0 <= i < len(ds)]
    if bad:
        raise SelectionError(f"{name} ids {bad[:5]} are out of range: the split has {len(ds)} images (ids 0..{len(ds) - 1})")
    wrong = [int(i) for i in ids if ds.labels[i] != label]
    if wrong:
        raise SelectionError(f"{name} ids {wrong[:5]} are not {ds.classes[label]!r} images")
    if not ids:
        raise SelectionError(f"{ds.source}: the selection of {name}s is empty")
    return [int(i) for i in ids]


def write_selection(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write RUN_DIR/selection.json ("data": the data set's path as the user gave it)."""
    atomic_write_text(Path(run_dir) / SELECTION, json.dumps(record, indent=2))


def read_selection(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN_DIR/selection.json as written by `write_selection` (or edited by hand)."""
    path = Path(run_dir) / SELECTION
    require(run_dir, SELECTION, error=SelectionError)
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


def selected_images(
    run_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, data: str | os.PathLike | None = None
) -> tuple[ImageDataset, list[int], list[int]]:
    """The data set split of RUN_DIR's selection with its (bird ids, horse ids), checked against it.
    data: where the data set is, instead of the path recorded in selection.json."""
    record = read_selection(run_dir)
    ds = load_dataset(data or record["data"], record["split"], cache_dir=cache_dir)
    return ds, check_ids(ds, "bird", record["birds"]["ids"]), check_ids(ds, "horse", record["horses"]["ids"])


# --- sampling defaults ------------------------------------------------------------------------------

DEFAULT_TEMPERATURE = 1.0


def _temperature(t: Any, where: str) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
        raise CheckpointError(f"{where}: \"temperature\" should be a finite number > 0, got {t!r}")
    return float(t)


def read_sampling_defaults(run_dir: str | os.PathLike) -> dict[str, float]:
    """The run's default sampling settings, {"temperature": T}: RUN_DIR/sampling.json when it
    exists (chosen by the run's author, e.g. after `pegasus evaluate --temperature`), else T = 1.0.
    A file that is not such a record raises CheckpointError naming it."""
    path = Path(run_dir) / SAMPLING
    if not path.is_file():
        return {"temperature": DEFAULT_TEMPERATURE}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(record, dict) or "temperature" not in record or set(record) - {"temperature", "note"}:
        raise CheckpointError(f"{path}: expected {{\"temperature\": T}} (and optionally \"note\"), got {record!r}")
    return {"temperature": _temperature(record["temperature"], str(path))}


def write_sampling_defaults(run_dir: str | os.PathLike, temperature: float, note: str | None = None) -> None:
    """Write RUN_DIR/sampling.json: the temperature that `sample`, `generate`, `evaluate`, the
    demo and Run.sample use when none is given (note: why, for whoever reads the file)."""
    path = Path(run_dir) / SAMPLING
    record: dict[str, Any] = {"temperature": _temperature(temperature, str(path))}
    if note:
        record["note"] = note
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


# --- latents --------------------------------------------------------------------------------------


def write_latents(run_dir: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write RUN_DIR/latents.safetensors (layout in the module docstring)."""
    atomic_write_bytes(Path(run_dir) / LATENTS, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))


def read_latents(run_dir: str | os.PathLike) -> dict[str, Tensor]:
    """RUN_DIR/latents.safetensors: indices [P, A, h, w], alphas [A], pairs [P, 2], with the codes
    checked against the VQ-VAE's K when config.json tells it."""
    run_dir = Path(run_dir)
    path = run_dir / LATENTS
    require(run_dir, LATENTS)
    tensors, _ = load_tensors(path)
    ind, al = tensors.get("indices"), tensors.get("alphas")
    if ind is None or al is None or ind.dim() != 4 or al.shape != (ind.shape[1],):
        raise CheckpointError(f"{path}: expected indices [P, A, h, w] and alphas [A], got {json.dumps({k: list(v.shape) for k, v in tensors.items()})}")
    if ind.dtype != torch.int64:
        raise CheckpointError(f"{path}: indices should be int64 code grids, got {ind.dtype}")
    codes = _codes_if_known(run_dir)
    if ind.numel() and (int(ind.min()) < 0 or (codes is not None and int(ind.max()) >= codes)):
        bad = int(ind.min()) if int(ind.min()) < 0 else int(ind.max())
        raise CheckpointError(f"{path}: holds code {bad}, outside the VQ-VAE's 0..{(codes or 1) - 1} (config.json)")
    _check_top_grids(path, tensors, codes)
    return tensors


def _check_top_grids(path: Path, tensors: dict[str, Tensor], codes: int | None) -> None:
    """A two-level run's latents also hold "top": int64 grids of half the height and width of
    "indices", one for each of its grids."""
    top, ind = tensors.get("top"), tensors["indices"]
    if top is None:
        return
    want = (*ind.shape[:-2], ind.shape[-2] // 2, ind.shape[-1] // 2)
    if top.dtype != torch.int64 or tuple(top.shape) != want:
        raise CheckpointError(f"{path}: top should be int64 grids {list(want)} (half the indices' grids), got {top.dtype} {list(top.shape)}")
    if top.numel() and (int(top.min()) < 0 or (codes is not None and int(top.max()) >= codes)):
        raise CheckpointError(f"{path}: top holds codes outside the VQ-VAE's 0..{(codes or 1) - 1} (config.json)")


def write_class_latents(run_dir: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Write RUN_DIR/class_latents.safetensors: indices [N, h, w] int64, alphas [N] float32."""
    atomic_write_bytes(Path(run_dir) / CLASS_LATENTS, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))


def read_class_latents(run_dir: str | os.PathLike) -> dict[str, Tensor]:
    """RUN_DIR/class_latents.safetensors, checked like latents.safetensors."""
    run_dir = Path(run_dir)
    path = run_dir / CLASS_LATENTS
    require(run_dir, CLASS_LATENTS)
    tensors, _ = load_tensors(path)
    ind, al = tensors.get("indices"), tensors.get("alphas")
    if ind is None or al is None or ind.dim() != 3 or al.shape != (ind.shape[0],) or ind.dtype != torch.int64:
        raise CheckpointError(f"{path}: expected int64 indices [N, h, w] and alphas [N], got {json.dumps({k: [str(v.dtype), *v.shape] for k, v in tensors.items()})}")
    codes = _codes_if_known(run_dir)
    if ind.numel() and (int(ind.min()) < 0 or (codes is not None and int(ind.max()) >= codes)):
        raise CheckpointError(f"{path}: holds codes outside the VQ-VAE's 0..{(codes or 1) - 1} (config.json)")
    _check_top_grids(path, tensors, codes)
    return tensors


def latents_meta(run_dir: str | os.PathLike) -> dict[str, str]:
    """The string metadata of RUN_DIR/latents.safetensors (data, split, seed, mirror, mode)."""
    run_dir = Path(run_dir)
    require(run_dir, LATENTS)
    return load_tensors(run_dir / LATENTS)[1]


# --- prior ----------------------------------------------------------------------------------------


def _load_model(folder: str | os.PathLike, config_name: str, weights_name: str, key: str, config_type: type, model_type: type,
                device: str | torch.device) -> Any:
    """model_type(config_type(**FOLDER/config_name[key])) with FOLDER/weights_name loaded, in eval mode."""
    folder = Path(folder)
    require(folder, config_name, weights_name)
    fields = read_run_config(folder / config_name, key)[key]
    try:
        cfg = config_type(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / config_name}: cannot read the {key} config ({e})") from e
    model = model_type(cfg)
    load_weights(folder / weights_name, model, config=cfg.to_dict())
    return model.to(device).eval()


PRIOR_LEVELS = ("bottom", "top")
"""The priors of a run: "bottom", its prior (of a one-level run, the only one); "top", the top
prior of a two-level run, whose files are in RUN_DIR/top/."""


def prior_dir(run_dir: str | os.PathLike, level: str = "bottom") -> Path:
    """The folder holding the prior_* files of `level` (PRIOR_LEVELS)."""
    if level not in PRIOR_LEVELS:
        raise ValueError(f"level should be one of {', '.join(PRIOR_LEVELS)}, got {level!r}")
    return Path(run_dir) / "top" if level == "top" else Path(run_dir)


def load_prior(run_dir: str | os.PathLike, device: str | torch.device = "cpu", level: str = "bottom") -> GatedPixelCNN:
    """The trained prior of RUN_DIR at `level` (PRIOR_LEVELS), in eval mode."""
    return _load_model(prior_dir(run_dir, level), PRIOR_CONFIG, PRIOR_WEIGHTS, "prior", PixelCNNConfig, GatedPixelCNN, device)


# --- classifier -----------------------------------------------------------------------------------


def load_classifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """The classifier in FOLDER (classifier.json + classifier.safetensors), in eval mode."""
    return _load_model(folder, CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, "classifier", ClassifierConfig, Classifier, device)

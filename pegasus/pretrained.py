"""The trained VQ-VAE and prior shipped inside the package (pegasus/weights/), and their export.

>>> run = pegasus.pretrained()            # a Run, as pegasus.load_run(...) returns
>>> images = run.sample(64, alpha=0.5)   # uint8 [64, 3, 32, 32], no data set and no network needed

The VQ-VAE is stored in float32 (2.9 MB) and the prior, 3.3M parameters, in float16 (6.5 MB; 13 MB
in float32 would not fit the package's 15 MB): it is loaded into float32, so the shipped model
*is* the float16-rounded one, and every sampler backend gives the same grids from it (rounding
changed a few samples of a seed against the float32 prior it came from, as a near-tie flips). The
folder is a run directory with only what sampling needs: config.json, vqvae.safetensors,
prior_config.json, prior.safetensors, the evaluation figures, the selection (selection.json: which
training images were the birds and horses, not the images), and the two classifiers
(classifier.*, the one `pegasus evaluate` scores with, and aux/classifier.*, the method's own).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from pegasus.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, load_tensors
from pegasus.rundir import (
    AUX_CLASSIFIER_DIR,
    CLASSIFIER_CONFIG,
    CLASSIFIER_EVAL,
    CLASSIFIER_WEIGHTS,
    CONFIG,
    PRIOR_CONFIG,
    PRIOR_EVAL,
    PRIOR_WEIGHTS,
    SAMPLING,
    SELECTION,
    VQVAE_EVAL,
    VQVAE_WEIGHTS,
    WEIGHTS_DIR,
    Run,
    load_classifier,
    load_run,
    prior_dir,
)

__all__ = ["AUX_CLASSIFIER_DIR", "WEIGHTS_DIR", "export_classifier", "export_run", "pretrained"]

_SHIPPED = (CONFIG, VQVAE_WEIGHTS, PRIOR_CONFIG, PRIOR_WEIGHTS, SELECTION)


def pretrained(device: str | torch.device = "cpu") -> Run:
    """The shipped run: its VQ-VAE and prior in float32, eval mode, on `device`."""
    missing = [name for name in _SHIPPED if not (WEIGHTS_DIR / name).is_file()]
    if missing:
        raise CheckpointError(
            f"the pretrained weights are missing from {WEIGHTS_DIR} ({', '.join(missing)}): "
            "reinstall pegasus, or export a run there with pegasus.pretrained.export_run"
        )
    return load_run(WEIGHTS_DIR, device)


def export_run(run_dir: str | os.PathLike, dest: str | os.PathLike = WEIGHTS_DIR, half: bool = False) -> dict[str, int]:
    """Copy what sampling needs from a finished run directory to `dest`, the prior's weights in
    float16 when `half` (the VQ-VAE's stay float32: 2.9 MB); the configs keep the model, training
    and data settings; a two-level run's top prior goes to dest/top/. Returns the size in bytes of each
file in `dest` (and dest/top/)."""
    run_dir, dest = Path(run_dir), Path(dest)
    run = load_run(run_dir)  # a run that does not load is not exported
    dest.mkdir(parents=True, exist_ok=True)
    # A two-level run's top prior goes to dest/top/ as it lies in RUN_DIR/top/.
    folders = [(run_dir, dest)]
    if run.levels == 2:
        folders.append((prior_dir(run_dir, "top"), prior_dir(dest, "top")))
        prior_dir(dest, "top").mkdir(exist_ok=True)
    else:  # a top prior left by an earlier export would not belong to this run
        shutil.rmtree(prior_dir(dest, "top"), ignore_errors=True)
    for src, dst in folders:
        for name in (VQVAE_WEIGHTS, PRIOR_WEIGHTS) if src == run_dir else (PRIOR_WEIGHTS,):
            tensors = load_file(src / name)
            halved = half and name == PRIOR_WEIGHTS
            if halved:
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"source": str(run_dir.name), "dtype": "float16" if halved else "float32"})
            atomic_write_bytes(dst / name, data)
    keep = {
        CONFIG: ("format", "pegasus", "vqvae", "train", "data"),
        PRIOR_CONFIG: ("format", "pegasus", "prior", "train", "latents"),
        VQVAE_EVAL: None,
        PRIOR_EVAL: None,
        SELECTION: None,
        SAMPLING: None,
    }
    for src, dst in folders:
        for name, fields in keep.items():
            if not (src / name).is_file() or (src != run_dir and name not in (PRIOR_CONFIG, PRIOR_EVAL)):
                continue
            record = json.loads((src / name).read_text())
            if fields is not None:
                record = {k: record[k] for k in fields if k in record}
            atomic_write_text(dst / name, json.dumps(_portable(record, dst / name), indent=2) + "\n")
    return {str(path.relative_to(dest)): path.stat().st_size
            for _, folder in folders for path in sorted(folder.iterdir()) if path.is_file()}


def export_classifier(folder: str | os.PathLike, dest: str | os.PathLike = WEIGHTS_DIR, half: bool = True) -> dict[str, int]:
    """Copy a `pegasus train-classifier` directory's classifier.json, classifier.safetensors
    (float16 weights when `half`: 1 MB instead of 2; it is loaded back into float32) and
    classifier_eval.json to `dest`. Returns the size in bytes of each file written."""
    folder, dest = Path(folder), Path(dest)
    load_classifier(folder)  # one that does not load is not exported
    dest.mkdir(parents=True, exist_ok=True)
    tensors, meta = load_tensors(folder / CLASSIFIER_WEIGHTS)
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    atomic_write_bytes(dest / CLASSIFIER_WEIGHTS, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    for name in (CLASSIFIER_CONFIG, CLASSIFIER_EVAL):
        record = json.loads((folder / name).read_text())
        atomic_write_text(dest / name, json.dumps(_portable(record, dest / name), indent=2) + "\n")
    return {name: (dest / name).stat().st_size for name in (CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, CLASSIFIER_EVAL)}


def _portable(record: dict, path: Path) -> dict:
    """`record` with its data-set path and the runs it started from (train.init, perceptual_net) by
    name (an absolute one is the exporting machine's layout), refusing any other absolute path:
    nothing machine-specific is shipped."""
    record = json.loads(json.dumps(record))
    train = record.get("train")
    for holder, key in ((record, "data"), (record.get("data"), "path"), (train, "init"), (train, "perceptual_net")):
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and os.path.isabs(holder[key]):
            holder[key] = Path(holder[key]).name

    def check(value: object, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                check(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        elif isinstance(value, str) and os.path.isabs(value):
            raise CheckpointError(f"{path}: refusing to write the absolute path {value!r} ({where}) into shipped weights")

    check(record, path.name)
    return record

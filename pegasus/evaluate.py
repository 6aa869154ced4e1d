"""`pegasus evaluate`: how much of the birds and horses survives each stage of a run, by a classifier.

The chain, for each alpha of EVAL_ALPHAS where the stage has pictures:
  selection       the real picks: the white birds (alpha 0) and white horses (alpha 1)
  reconstruction  the picks through the VQ-VAE (encode, nearest codes, decode)
  interpolation   decoded interpolation grids of bird/horse pairs, mixed as the run's latents were
  samples         the prior's samples, decoded
Per stage and alpha: the classifier's mean P(bird) and P(horse); the mean whiteness score and the
share of pictures white in the centre; diversity, the mean pairwise distance of the classifier's
features relative to the same among the real picks; and the Frechet distance between the
pictures' features and the real picks' features. That last figure is the FID formula in the
feature space of pegasus's own small classifier (pegasus.models.classifier), not Inception FID:
its values are comparable between runs scored by the same classifier, not with published FIDs.
Also: the classifier's accuracy on the test split, originals against reconstructions.

Writes evaluation.json (everything), evaluation.png (P(bird) and P(horse) against alpha, one
line per stage) and evaluation_samples.png (16 samples per alpha), and prints a table.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from tqdm.auto import tqdm

from pegasus.checkpoint import atomic_write_bytes, atomic_write_text
from pegasus.data import DatasetError, load_dataset
from pegasus.images import images_to_tensor, make_grid, save_image, to_uint8, white_centre, whiteness
from pegasus.mixing import choose_pairs, interpolate_codes, region_field
from pegasus.models.classifier import Classifier, predict
from pegasus.rundir import (
    EVALUATION,
    EVALUATION_PLOT,
    EVALUATION_SAMPLES,
    LATENTS,
    PRIOR_CONFIG,
    SELECTION,
    latents_meta,
    load_classifier,
    read_selection,
    selected_images,
)
from pegasus.rundir import Run, load_run
from pegasus.sampling import SamplingOptions

__all__ = ["EVAL_ALPHAS", "STAGES", "evaluate_run", "frechet_distance", "format_report", "white_centre"]

EVAL_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
STAGES = ("selection", "reconstruction", "interpolation", "samples")
WHITE_CENTRE = 0.5
"""A picture is white in the centre when the darkest channel of its central square (the middle
half of each side) averages >= 0.5 on [0, 1]: light and unsaturated. 52 of the shipped run's 56
picks pass; of all CIFAR-10 training birds and horses, 13% and 15%."""
Score = Callable[[np.ndarray], dict[str, float]]
"""The figures of one (stage, alpha) cell (`_score`) for uint8 pictures [N, H, W, 3]."""


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [N, F] (the FID
    formula). tr((S_a S_b)^(1/2)) is computed as tr((R S_b R)^(1/2)) with R = S_a^(1/2), which is
    symmetric, so eigh suffices (no scipy)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def mean_pairwise_distance(features: np.ndarray) -> float:
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if len(f) < 2:
        return float("nan")
    d = torch.cdist(f, f)
    return float(d.sum() / (len(f) * (len(f) - 1)))


def _nhwc(images: Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def _score(classifier: Classifier, images: np.ndarray, real_features: np.ndarray, real_spread: float) -> dict[str, float]:
    """The figures of one (stage, alpha) cell for uint8 images [N, H, W, 3]."""
    bird, horse = classifier.class_index("bird"), classifier.class_index("horse")
    probs = predict(classifier, images)
    feats = predict(classifier, images, features=True).numpy()
    centre = white_centre(images)
    return {
        "n": len(images),
        "p_bird": float(probs[:, bird].mean()),
        "p_horse": float(probs[:, horse].mean()),
        "top_bird": float((probs.argmax(1) == bird).float().mean()),
        "top_horse": float((probs.argmax(1) == horse).float().mean()),
        "whiteness": float(whiteness(images).mean()),
        "white_share": float((centre >= WHITE_CENTRE).mean()),
        "diversity": mean_pairwise_distance(feats) / real_spread,
        "frechet": frechet_distance(feats, real_features),
    }


@torch.no_grad()
def _reconstruct(run: Run, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 [N, H, W, 3] -> their VQ-VAE reconstructions, uint8 [N, H, W, 3]."""
    device = next(run.vqvae.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i : i + batch_size], device)
        out.append(to_uint8(run.vqvae.decode_codes(run.vqvae.codes(x))).cpu())
    return _nhwc(torch.cat(out))


def evaluate_run(
    run_dir: str | os.PathLike,
    classifier: Classifier | str | os.PathLike | None = None,
    n: int = 256,
    alphas: tuple[float, ...] = EVAL_ALPHAS,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    backend: str | None = None,
    batch_size: int = 256,
    test_images: int | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The quality report of RUN_DIR (module docstring), written to `out` (default: RUN_DIR).

    classifier: a Classifier, a folder written by `pegasus train-classifier`, or None for the one
    shipped in the package. n: samples and interpolated pairs per alpha. data: the data set, if
    not where the run's selection.json says. test_images: score only the first that many of the
    test split (default all). temperature None: the run's (RUN_DIR/sampling.json, else 1.0). The
    samples are those of `pegasus sample` with the same seed and temperature.
    """
    from pegasus.rundir import WEIGHTS_DIR

    run_dir = Path(run_dir)
    if n < 2:
        raise ValueError(f"n should be >= 2 (diversity needs pairs), got {n}")
    options = SamplingOptions(temperature=temperature, top_k=top_k, seed=seed, backend=backend, batch_size=batch_size)
    if not isinstance(classifier, Classifier):
        classifier = load_classifier(WEIGHTS_DIR if classifier is None else classifier, device)
    run = load_run(run_dir, device)
    options = run.options_for(options)
    picks, mix = _picks(run_dir, cache_dir, data), _mixing(run_dir)
    with tqdm(total=len(alphas) * 2 + 3, desc="evaluate", unit="part", disable=not progress, dynamic_ncols=True) as bar:
        score = _scorer(classifier, np.concatenate([picks.birds, picks.horses]), bar)
        table = {
            "selection": {"0": score(picks.birds), "1": score(picks.horses)},
            "reconstruction": {"0": score(_reconstruct(run, picks.birds)), "1": score(_reconstruct(run, picks.horses))},
            "interpolation": _interpolation(run, score, picks, n, alphas, seed, mix),
        }
        table["samples"], shown = _samples(run, score, n, alphas, options)
        accuracy = _test_accuracy(run, classifier, data or read_selection(run_dir)["data"], cache_dir, test_images)
        bar.update(1)
    report = {
        "run": "pretrained (pegasus/weights)" if run_dir.resolve() == WEIGHTS_DIR.resolve() else str(run_dir),
        "classifier": {"classes": classifier.cfg.classes, "widths": list(classifier.cfg.widths)},
        "settings": {"n": n, "alphas": list(alphas), "seed": seed, "temperature": options.temperature, "top_k": top_k, "interpolation": mix,
                     "picks": [len(picks.birds), len(picks.horses)], "white_centre_threshold": WHITE_CENTRE},
        "test_accuracy": accuracy,
        "stages": table,
        "targets": _targets(table, accuracy["kept"]),
    }
    _write(report, shown, Path(out) if out is not None else run_dir)
    return report


class _Picks(NamedTuple):
    """The run's real picks: uint8 images [N, H, W, 3] and their ids in the data set's split."""

    birds: np.ndarray
    horses: np.ndarray
    bird_ids: list[int]
    horse_ids: list[int]


def _picks(run_dir: Path, cache_dir: str | os.PathLike | None, data: str | os.PathLike | None) -> _Picks:
    """The birds and horses of RUN_DIR's selection.json, from `data` or the data set it names."""
    try:
        ds, bird_ids, horse_ids = selected_images(run_dir, cache_dir, data)
    except DatasetError as e:
        if data is not None:
            raise
        raise DatasetError(f"{e} [the data set that {run_dir / SELECTION} names; pass --data PATH if it is elsewhere]") from e
    return _Picks(np.asarray(ds.images[bird_ids]), np.asarray(ds.images[horse_ids]), bird_ids, horse_ids)


def _scorer(classifier: Classifier, real: np.ndarray, bar: tqdm) -> Score:
    """`_score` against the real picks, uint8 [N, H, W, 3]; each call is one step of the bar."""
    real_features = predict(classifier, real, features=True).numpy()
    real_spread = mean_pairwise_distance(real_features)

    def score(images: np.ndarray) -> dict[str, float]:
        cell = _score(classifier, images, real_features, real_spread)
        bar.update(1)
        return cell

    return score


@torch.no_grad()
def _interpolation(
    run: Run, score: Score, picks: _Picks, n: int, alphas: tuple[float, ...], seed: int, mix: str
) -> dict[str, dict[str, float]]:
    """The scores per alpha of min(n, all) bird/horse pairs (`choose_pairs` with seed), their
    latents mixed as the run's were (mix) and decoded."""
    pairs = choose_pairs(len(picks.birds), len(picks.horses), min(n, len(picks.birds) * len(picks.horses)), seed)
    device = next(run.vqvae.parameters()).device
    z_b = run.vqvae.encode(images_to_tensor(picks.birds, device))
    z_h = run.vqvae.encode(images_to_tensor(picks.horses, device))
    ids = np.stack([np.asarray(picks.bird_ids)[pairs[:, 0]], np.asarray(picks.horse_ids)[pairs[:, 1]]], axis=1)
    field = region_field(ids, tuple(z_b.shape[-2:]), seed) if mix == "regions" else None
    grids = interpolate_codes(run.vqvae, z_b, z_h, pairs, list(alphas), mode=mix, field=field)
    return {_key(alpha): score(_nhwc(run.decode([level[:, k] for level in grids]))) for k, alpha in enumerate(alphas)}


def _samples(
    run: Run, score: Score, n: int, alphas: tuple[float, ...], options: SamplingOptions
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """(the scores per alpha of n samples of `run.sample`, the first 16 of each alpha, uint8
    Tensor[16, 3, H, W], for the sample sheet)."""
    cells, shown = {}, {}
    for alpha in alphas:
        samples = run.sample(n, alpha, options=options)
        cells[_key(alpha)], shown[_key(alpha)] = score(_nhwc(samples)), samples[:16]
    return cells, shown


def _test_accuracy(
    run: Run, classifier: Classifier, data: str | os.PathLike, cache_dir: str | os.PathLike | None, test_images: int | None
) -> dict[str, float]:
    """The classifier's accuracy on the first `test_images` (None: all) of the test split, originals
    against their reconstructions."""
    test = load_dataset(data, "test", cache_dir=cache_dir)
    count = len(test) if test_images is None else min(test_images, len(test))
    originals, labels = np.asarray(test.images[:count]), np.asarray(test.labels[:count])
    acc_orig = _accuracy(classifier, originals, labels)
    acc_recon = _accuracy(classifier, _reconstruct(run, originals), labels)
    return {"originals": acc_orig, "reconstructions": acc_recon, "kept": acc_recon / acc_orig, "images": count}


def _write(report: dict[str, Any], shown: dict[str, Tensor], out: Path) -> None:
    """evaluation.json, evaluation.png and evaluation_samples.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / EVALUATION, json.dumps(report, indent=2))
    _plot(report, out / EVALUATION_PLOT)
    _sample_sheet(shown, out / EVALUATION_SAMPLES)


def _key(alpha: float) -> str:
    return f"{alpha:g}"


def _mixing(run_dir: Path) -> str:
    """How the run's latents were interpolated (latents.safetensors metadata), "linear" when unknown."""
    if not (run_dir / LATENTS).is_file():  # an exported run (the shipped one) records it in prior_config.json
        try:
            return json.loads((run_dir / PRIOR_CONFIG).read_text())["latents"].get("mode", "linear")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "linear"
    return latents_meta(run_dir).get("mode", "linear")


def _accuracy(classifier: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    # The mean in float64, as evaluation.json has always recorded it: models.classifier.accuracy's
    # float32 mean differs from the 9th digit (262 of 300: 0.8733333349 against 0.8733333333).
    return float((predict(classifier, images).argmax(1).numpy() == labels).mean())


def _targets(table: dict, acc_kept: float) -> dict[str, dict[str, Any]]:
    """The quality targets of the project (issue 13) with this run's figures."""
    s, r = table["samples"], table["reconstruction"]
    mid = s.get("0.5")

    def target(value: float | None, goal: float) -> dict[str, Any]:
        ok = value is not None and not math.isnan(value) and value >= goal
        return {"value": value, "goal": goal, "met": ok}

    out = {"reconstructions keep test accuracy": target(acc_kept, 0.9)}
    if "0" in s:
        out["samples at alpha 0 keep P(bird) of reconstructed birds"] = target(s["0"]["p_bird"] / r["0"]["p_bird"], 0.9)
    if "1" in s:
        out["samples at alpha 1 keep P(horse) of reconstructed horses"] = target(s["1"]["p_horse"] / r["1"]["p_horse"], 0.9)
    if mid:
        out["alpha 0.5: P(bird)"] = target(mid["p_bird"], 0.2)
        out["alpha 0.5: P(horse)"] = target(mid["p_horse"], 0.2)
        out["alpha 0.5: share white in the centre"] = target(mid["white_share"], 0.8)
        out["alpha 0.5: diversity relative to the picks"] = target(mid["diversity"], 0.5)
    return out


def format_report(report: dict[str, Any]) -> str:
    """The printed table of a report."""
    cols = ("p_bird", "p_horse", "white_share", "diversity", "frechet")
    lines = [f"{'stage':<15}{'alpha':>6}{'n':>6}" + "".join(f"{c:>13}" for c in cols)]
    for stage, cells in report["stages"].items():
        for key, cell in cells.items():
            lines.append(f"{stage:<15}{key:>6}{cell['n']:>6}" + "".join(f"{cell[c]:>13.3f}" for c in cols))
    acc = report["test_accuracy"]
    lines.append(
        f"\ntest accuracy ({acc['images']} images): originals {acc['originals']:.3f}, "
        f"reconstructions {acc['reconstructions']:.3f} ({acc['kept']:.0%} kept)"
    )
    lines.append("\ntargets:")
    for name, t in report["targets"].items():
        lines.append(f"  {'met ' if t['met'] else 'MISS'} {name}: {t['value']:.3f} (goal >= {t['goal']:g})")
    lines.append("\nfrechet: the FID formula in the features of pegasus's own classifier (not Inception FID)")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "p_bird", "P(bird)"), (axes[1], "p_horse", "P(horse)")):
        for stage, cells in report["stages"].items():
            xs = [float(a) for a in cells]
            ax.plot(xs, [cells[a][key] for a in cells], marker="o", lw=1.5, label=stage)
        ax.set_title(f"{title} by the classifier")
        ax.set_xlabel("alpha (0 bird, 1 horse)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _sample_sheet(shown: dict[str, Tensor], path: Path, ncol: int = 16) -> None:
    """One row of samples per alpha, labelled."""
    label_w = 70
    rows = []
    for key, images in shown.items():
        grid = make_grid(images, nrow=ncol, pad=2, scale=2)
        img = Image.fromarray(np.pad(grid, ((0, 0), (label_w, 0), (0, 0)), constant_values=255))
        ImageDraw.Draw(img).text((4, grid.shape[0] // 2 - 6), f"alpha {key}", fill=(0, 0, 0))
        rows.append(np.asarray(img))
    width = max(r.shape[1] for r in rows)
    save_image(np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]), path)

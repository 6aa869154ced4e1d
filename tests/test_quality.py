"""The quality chain: the classifier and its training, `pegasus evaluate`, the interpolation modes,
class grids with prior pre-training and the best held-out checkpoint, recognisable picks, and the
VQ-VAE's perceptual loss."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pegasus.cli import main
from pegasus.data import load_dataset
from pegasus.evaluate import EVAL_ALPHAS, evaluate_run, format_report, frechet_distance
from pegasus.images import white_centre
from pegasus.interpolate import interpolate
from pegasus.mixing import mix, region_field
from pegasus.models.classifier import Classifier, ClassifierConfig, perceptual_distance
from pegasus.rundir import latents_meta, load_classifier, read_class_latents, read_latents, read_selection
from pegasus.select import select_white
from pegasus.models.classifier import predict
from pegasus.train_classifier import augment, lr_at, train_classifier
from pegasus.train_prior import PriorTrainConfig, train_prior
from pegasus.train_vqvae import VQVAETrainConfig, train_vqvae

from .conftest import TINY_MODEL

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY_CLASSIFIER = (4, 8, 8, 16)


@pytest.fixture(scope="module")
def tiny_classifier(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    summary = train_classifier(tiny_folder, out, train_cfg={"steps": 12, "batch_size": 16, "checkpoint_every": 6},
                               widths=TINY_CLASSIFIER, progress=False)
    return out, summary


def test_classifier_trains_resumes_and_loads(tiny_folder, tiny_classifier, tmp_path):
    out, summary = tiny_classifier
    for name in ("classifier.json", "classifier.safetensors", "classifier_eval.json", "classifier_metrics.jsonl", "classifier_loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert summary["steps"] == 12 and summary["test_images"] == 80 and set(summary["per_class"]) == set(CLASSES)
    model = load_classifier(out)
    assert model.cfg.classes == CLASSES and model.cfg.image_size == (16, 16) and not model.training
    test = load_dataset(tiny_folder, "test")
    probs = predict(model, test.images)
    assert probs.shape == (80, 10) and torch.allclose(probs.sum(1), torch.ones(80), atol=1e-5)
    assert summary["test_accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == test.labels).mean()))
    # The training split's statistics were set, not left at the placeholder.
    assert not torch.allclose(model.mean, torch.full_like(model.mean, 0.5))

    # Killed after the checkpoint of step 6 (the last one lost) and resumed: the same weights as
    # 12 straight steps (the lr schedule, batches and augmentation are functions of the step).
    part = tmp_path / "part"
    shutil.copytree(out, part)
    (part / "classifier_checkpoint.safetensors").unlink()
    (part / "classifier.safetensors").unlink()
    train_classifier(tiny_folder, part, train_cfg={"steps": 12}, widths=TINY_CLASSIFIER, resume=True, progress=False)
    a, b = load_file(out / "classifier.safetensors"), load_file(part / "classifier.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_rejects_bad_input():
    with pytest.raises(ValueError, match="needs >= 2 classes"):
        ClassifierConfig(classes=["bird"])
    model = Classifier(ClassifierConfig(classes=CLASSES, widths=TINY_CLASSIFIER))
    with pytest.raises(ValueError, match=r"expects images Tensor\[B, 3, H, W\], got \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="no 'pegasus' class"):
        model.class_index("pegasus")
    # Any image size: resized to the training size first.
    assert model(torch.rand(3, 3, 48, 48)).shape == (3, 10)


def test_lr_schedule_and_augmentation():
    assert lr_at(0, 100, 0.2) == pytest.approx(0.008) and lr_at(25, 100, 0.2) == pytest.approx(0.2)
    assert lr_at(100, 100, 0.2) == 0 and lr_at(60, 100, 0.2) < lr_at(40, 100, 0.2)
    x = torch.rand(64, 3, 8, 8)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # Each output is its input, maybe mirrored, shifted by up to 2 pixels: the centre 4x4 of the
    # input appears somewhere in the output or its mirror.
    for a, b in zip(x, y):
        found = any(
            torch.equal(v[:, dy : dy + 4, dx : dx + 4], a[:, 2:6, 2:6])
            for v in (b, b.flip(2)) for dy in range(5) for dx in range(5)
        )
        assert found
    assert torch.equal(augment(x, torch.Generator().manual_seed(0)), y)


def test_perceptual_distance_is_zero_on_equal_images_and_has_gradients():
    torch.manual_seed(0)
    net = Classifier(ClassifierConfig(classes=CLASSES, widths=TINY_CLASSIFIER)).eval()
    a = torch.rand(4, 3, 16, 16)
    assert float(perceptual_distance(net, a, a).detach()) == pytest.approx(0, abs=1e-6)
    b = a.clone().requires_grad_(True)
    d = perceptual_distance(net, b + 0.1 * torch.randn_like(a), a)
    d.backward()
    assert float(d.detach()) > 0 and b.grad is not None and b.grad.abs().sum() > 0


def test_frechet_distance_and_white_centre():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) against N(m, 4I) in 3-D: |m|^2 + 3 (1 + 4 - 2 * 2) = |m|^2 + 3.
    b = rng.normal(size=(4000, 3)) * 2 + np.array([1.0, 0, 2])
    assert frechet_distance(a, b) == pytest.approx(5 + 3, rel=0.05)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    img = np.zeros((2, 8, 8, 3), np.uint8)
    img[0, 2:6, 2:6] = 255
    img[1, 2:6, 2:6] = (255, 255, 0)  # yellow: bright but not white
    assert white_centre(img).tolist() == [1.0, 0.0]


def test_interpolation_modes():
    zb, zh = torch.randn(3, 1, 4, 5, 5), torch.randn(3, 1, 4, 5, 5)
    a = torch.tensor([0.0, 0.3, 1.0])[None, :, None, None, None]
    field = region_field(np.array([[1, 2], [3, 4], [5, 6]]), (5, 5), 0)
    for mode in ("linear", "slerp", "regions"):
        m = mix(zb, zh, a, mode, field)
        assert m.shape == (3, 3, 4, 5, 5)
        torch.testing.assert_close(m[:, 0], zb[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m[:, 2], zh[:, 0], atol=1e-5, rtol=1e-5)
    # slerp keeps the lengths mixed linearly; the linear mix of two far vectors is shorter.
    s = mix(zb, zh, a, "slerp")[:, 1].norm(dim=1)
    torch.testing.assert_close(s, 0.7 * zb[:, 0].norm(dim=1) + 0.3 * zh[:, 0].norm(dim=1))
    # regions: ceil(0.3 * 25) = 8 positions (rank order, ties impossible) from the horse, the rest from the bird.
    r = mix(zb, zh, a, "regions", field)[:, 1]
    from_horse = (r == zh[:, 0]).all(1)
    assert from_horse.sum((1, 2)).tolist() == [8, 8, 8] and ((r == zb[:, 0]).all(1) | from_horse).all()
    assert not torch.equal(field[0], field[1]) and torch.equal(field, region_field(np.array([[1, 2], [3, 4], [5, 6]]), (5, 5), 0))
    with pytest.raises(ValueError, match="interpolation mode should be one of linear, slerp, regions, got 'cubic'"):
        mix(zb, zh, a, "cubic")


def test_regions_mode_and_class_grids_in_a_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = interpolate(run, alphas=[0, 0.5, 1], mode="regions", mirror=True, class_grids=True)
    assert summary["mode"] == "regions" and latents_meta(run)["mode"] == "regions"
    lat = read_latents(run)
    plain, mirrored = lat["indices"][~lat["mirrored"]], lat["indices"][lat["mirrored"]]
    # alpha 0 and 1 are the picks' own grids; the mirrored pair mixes along the mirrored map.
    assert plain.shape == mirrored.shape == (64, 3, 4, 4)
    classes = read_class_latents(run)
    ds = load_dataset(read_selection(run)["data"], "train")
    n_bird, n_horse = int((ds.labels == 2).sum()), int((ds.labels == 7).sum())
    assert classes["indices"].shape == (2 * (n_bird + n_horse), 4, 4)
    assert classes["alphas"].tolist() == [0.0] * (2 * n_bird) + [1.0] * (2 * n_horse)


def test_prior_pretraining_and_best_heldout_checkpoint(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("prior_checkpoint.safetensors", "prior_checkpoint.prev.safetensors", "prior.safetensors", "prior_eval.json", "prior_metrics.jsonl"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(Exception, match="class_latents.safetensors is missing: run `pegasus interpolate --run-dir .* --class-grids` first"):
        train_prior(run, {"channels": 8, "layers": 2, "kernel": 3}, {"steps": 8, "pretrain_steps": 4}, progress=False)
    interpolate(run, class_grids=True)
    ev = train_prior(run, {"channels": 8, "layers": 2, "kernel": 3},
                     {"steps": 12, "batch_size": 16, "pretrain_steps": 4, "checkpoint_every": 2}, progress=False)
    records = [json.loads(line) for line in (run / "prior_metrics.jsonl").read_text().splitlines()]
    checked = {r["step"]: r["heldout_bits"] for r in records if "heldout_bits" in r}
    assert sorted(checked) == [2, 4, 6, 8, 10, 12]
    best = min((s for s in checked if s >= 4), key=lambda s: checked[s])
    assert ev["best_step"] == best and ev["class_grids"] > 0
    kept = load_file(run / "prior.safetensors")
    best_file = load_file(run / "prior_best.safetensors")
    assert all(torch.equal(kept[k], best_file[k]) for k in kept)
    with pytest.raises(ValueError, match=r"pretrain-steps should be in 0..steps-1 \(9\), got 10"):
        PriorTrainConfig(steps=10, pretrain_steps=10)


def test_recognisable_picks_are_white_and_recognised(tiny_folder, tiny_classifier, monkeypatch):
    import pegasus.select as select_mod
    from pegasus.images import white_centre, whiteness

    ds = load_dataset(tiny_folder, "train")
    model = load_classifier(tiny_classifier[0])
    members = np.flatnonzero(ds.labels == 2)
    sure = predict(model, ds.images[members])[:, 2].numpy()
    score, centre = whiteness(ds.images[members]), white_centre(np.asarray(ds.images[members]))
    # Thresholds that split this tiny set: some birds qualify, some do not.
    monkeypatch.setattr(select_mod, "RECOGNISABLE", float(np.median(sure)))
    monkeypatch.setattr(select_mod, "CONTRAST", float(np.min(score)))
    eligible = sure >= np.median(sure)
    assert 0 < eligible.sum() < len(members)
    n = int(eligible.sum()) + 1  # one more than qualify: the rest follow in the same order
    birds, horses = select_white(ds, birds=n, horses=2, classifier=model)
    qualified = members[eligible][np.argsort(-centre[eligible], kind="stable")]
    runner_up = members[~eligible][np.argmax(centre[~eligible])]
    assert birds.ids == [*qualified.tolist(), int(runner_up)]
    assert birds.confidence == pytest.approx(predict(model, ds.images[birds.ids])[:, 2].tolist(), abs=1e-6)
    plain, _ = select_white(ds, birds=2, horses=2)
    assert plain.confidence is None and len(horses.ids) == 2


def test_evaluate_reports_every_stage_and_writes_files(tiny_run, tiny_classifier, tmp_path):
    out = tmp_path / "eval"
    report = evaluate_run(tiny_run, classifier=tiny_classifier[0], n=8, out=out, progress=False)
    for name in ("evaluation.json", "evaluation.png", "evaluation_samples.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "evaluation.json").read_text()) == json.loads(json.dumps(report))
    keys = [f"{a:g}" for a in EVAL_ALPHAS]
    assert list(report["stages"]["selection"]) == ["0", "1"] and list(report["stages"]["samples"]) == keys
    assert list(report["stages"]["interpolation"]) == keys
    for cells in report["stages"].values():
        for cell in cells.values():
            assert 0 <= cell["p_bird"] <= 1 and 0 <= cell["p_horse"] <= 1 and 0 <= cell["white_share"] <= 1
            assert cell["diversity"] >= 0 and cell["frechet"] >= -1e-6
    # The real picks against themselves: Frechet distance 0 up to rounding.
    sel = read_selection(tiny_run)
    assert report["stages"]["selection"]["0"]["n"] == len(sel["birds"]["ids"])
    acc = report["test_accuracy"]
    assert acc["kept"] == pytest.approx(acc["reconstructions"] / acc["originals"])
    assert set(report["targets"]) >= {"reconstructions keep test accuracy", "alpha 0.5: P(bird)"}
    text = format_report(report)
    assert "reconstruction" in text and "not Inception FID" in text


def test_evaluate_and_train_classifier_cli(tiny_folder, tiny_run, tiny_classifier, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["train-classifier", "--data", str(tiny_folder), "--out", str(out), "--epochs", "0.2", "--batch-size", "16"]) == 0
    assert json.loads((out / "classifier_eval.json").read_text())["steps"] == 1  # 0.2 * 80 / 16
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(tiny_run), "--classifier", str(tiny_classifier[0]), "-n", "4",
                 "--out", str(tmp_path / "e"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["n"] == 4
    assert main(["evaluate", "--run-dir", str(tmp_path / "nothing"), "--classifier", str(tiny_classifier[0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pegasus: error: ") and "is missing" in err and err.count("\n") == 1
    assert main(["evaluate", "--run-dir", str(tiny_run), "--classifier", str(tmp_path)]) == 1
    assert "classifier.json is missing: run `pegasus train-classifier" in capsys.readouterr().err


def test_vqvae_perceptual_loss_and_init(tiny_folder, tiny_run, tiny_classifier, tmp_path):
    out = tmp_path / "v"
    train_vqvae(tiny_folder, out, TINY_MODEL, {"steps": 4, "batch_size": 16, "perceptual": 0.5,
                "perceptual_net": str(tiny_classifier[0]), "init": str(tiny_run)}, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("perceptual" in r for r in records)
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["perceptual"] == 0.5 and saved["init"] == str(tiny_run)
    with pytest.raises(ValueError, match="perceptual should be >= 0, got -1"):
        VQVAETrainConfig(perceptual=-1)
    with pytest.raises(Exception, match="its VQ-VAE settings .* differ"):
        train_vqvae(tiny_folder, tmp_path / "w", {**TINY_MODEL, "codes": 16}, {"steps": 2, "batch_size": 16, "init": str(tiny_run)}, progress=False)


def test_evaluate_names_the_missing_data_set(tiny_run, tiny_classifier, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "selection.json").read_text())
    record["data"] = "elsewhere/cifar10-jpg.tar.gz"
    (run / "selection.json").write_text(json.dumps(record))
    assert main(["evaluate", "--run-dir", str(run), "--classifier", str(tiny_classifier[0])]) == 1
    err = capsys.readouterr().err
    assert "elsewhere/cifar10-jpg.tar.gz: no such file" in err and "pass --data PATH" in err


def test_export_classifier_in_half_precision(tiny_classifier, tmp_path):
    from pegasus.pretrained import export_classifier

    sizes = export_classifier(tiny_classifier[0], tmp_path / "w")
    assert set(sizes) == {"classifier.json", "classifier.safetensors", "classifier_eval.json"}
    assert all(v.dtype == torch.float16 for k, v in load_file(tmp_path / "w" / "classifier.safetensors").items() if v.is_floating_point())
    full, half = load_classifier(tiny_classifier[0]), load_classifier(tmp_path / "w")
    x = torch.rand(8, 3, 16, 16)
    assert next(half.parameters()).dtype == torch.float32
    torch.testing.assert_close(half(x).softmax(1), full(x).softmax(1), atol=2e-2, rtol=0)


def test_pipeline_takes_the_quality_settings(tiny_folder, tmp_path):
    from pegasus.pipeline import run_pipeline

    from .conftest import TINY_PIPELINE

    settings = {**TINY_PIPELINE, "select": {"recognisable": True, "birds": 3, "horses": 4},
                "interpolate": {"mirror": True, "mode": "slerp", "class_grids": True},
                "prior_train": {**TINY_PIPELINE["prior_train"], "pretrain_steps": 10}}
    out = tmp_path / "run"
    run_pipeline(tiny_folder, out, settings=settings, progress=False)
    sel = read_selection(out)
    assert len(sel["birds"]["ids"]) == 3 and len(sel["birds"]["confidence"]) == 3  # the shipped auxiliary classifier chose them
    assert latents_meta(out)["mode"] == "slerp" and read_class_latents(out)["indices"].shape[0] > 0
    ev = json.loads((out / "prior_eval.json").read_text())
    assert ev["class_grids"] > 0 and ev["mode"] == "slerp" and ev["best_step"] >= 10

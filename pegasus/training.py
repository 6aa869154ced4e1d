"""The training machinery the VQ-VAE, the prior and the classifier share: one skeleton, `train`,
that each fills in with the hooks of a `Trainer` (what to build, the loss of a step, what to
evaluate). It settles the settings with the --resume rules, writes the config file, resumes from
the checkpoint, runs a loop with a tqdm bar, metrics.jsonl, atomic checkpoints and a stop on a
non-finite loss, then writes the weights, the evaluation and the loss curves.

Under torchrun (see pegasus._distributed) every rank runs the loop on its slice of each batch;
the logged scalars are means over the ranks, and rank 0 alone writes metrics and checkpoints.
"""
from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pegasus._distributed import Dist
from pegasus.checkpoint import (
    atomic_write_text,
    has_checkpoint,
    load_checkpoint,
    previous_path,
    read_checkpoint,
    read_run_config,
    remove_stale_temps,
    save_checkpoint,
    save_weights,
    stamp,
)
from pegasus.images import save_loss_curves
from pegasus.machine import busy_cores, cpu_isa

_log = logging.getLogger(__name__)

StepLoss = Callable[[int], tuple[dict[str, Tensor], int]]
"""step -> ({"loss": scalar to minimise, other scalars to log}, items in this rank's batch)."""
Validate = Callable[[int], dict[str, float]]
"""step -> scalars measured before the checkpoint of that step (in eval mode, without gradients)."""


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss, or a run directory that does not fit the request."""


PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device | str) -> tuple[bool, str]:
    """(whether bfloat16 autocast is a lever on `device`, how that was decided).

    CUDA: torch.cuda.is_bf16_supported(). CPU: the CPU has AVX512_BF16 or AMX_BF16 (native
    bfloat16 products; oneDNN uses them), read from the CPU itself (`pegasus.machine.cpu_isa`:
    CPUID, /proc/cpuinfo only where torch cannot read it), and torch was built with oneDNN.
    Without them bfloat16 is emulated and far slower than float32 (`BF16_EMULATED_COST`), so such
    CPUs default to fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() is {ok}"
    if device.type != "cpu":
        return False, f"no bfloat16 autocast rule for {device.type}"
    isa, source = cpu_isa()
    if isa is None:
        return False, f"{source} is unreadable, so the CPU's bfloat16 support is unknown"
    native = [name for name in ("avx512_bf16", "amx_bf16") if name in isa]
    if not native:
        return False, f"the CPU has neither avx512_bf16 nor amx_bf16 ({source})"
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN"
    return True, f"the CPU has {' and '.join(native)} ({source})"


BF16_EMULATED_COST = (
    "train-vqvae ran ~20x slower than in fp32 where measured "
    "(16 images/s against ~320 on an AMD EPYC with AVX2 and no BF16 instructions)"
)
"""What bfloat16 autocast costs on a CPU without BF16 instructions, for the warning."""

_warned_emulated_bf16 = False


def _warn_emulated_bf16(device: torch.device | str) -> None:
    """One line on stderr, once a process, when bf16 is to run on a CPU that would emulate it."""
    global _warned_emulated_bf16
    ok, why = bf16_supported(device)
    if ok or torch.device(device).type != "cpu" or _warned_emulated_bf16:
        return
    _warned_emulated_bf16 = True
    _log.warning("warning: --precision bf16: bfloat16 is emulated on this CPU, because %s; %s. Proceeding in bf16", why, BF16_EMULATED_COST)


def _warn_busy_cores() -> None:
    """One line on stderr when another process holds one of torch's cores at the start of training.
    A warning, not pegasus.machine.guarded_threads: the thread count changes the order of float sums
    and so the weights (3 train-vqvae steps on 1 and on 2 threads: up to 9e-8 apart), and a
    resumed run must train as an uninterrupted one."""
    region = busy_cores()
    if region is None:
        return
    threads = torch.get_num_threads()
    _log.warning(
        "warning: another process is using this CPU's cores (a parallel region of %d threads took %.1f ms instead of "
        "~0.02 ms), so training on %d threads may run many times slower (a VQ-VAE step: 30 images/s against 338 on 1 thread, "
        "measured on 2 Zen 4 cores); --threads 1 avoids it, and so does OMP_WAIT_POLICY=PASSIVE set before pegasus starts",
        threads, region * 1e3, threads,
    )


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """"fp32" or "bf16": the one asked for, else bf16 where `bf16_supported`, else fp32."""
    if precision is None:
        return "bf16" if bf16_supported(device)[0] else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision should be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass
class TrainConfig:
    """precision: "fp32", or "bf16" (the forward pass under bfloat16 autocast; the quantiser, the
    losses, the EMA statistics, the weights and the checkpoints stay float32); None: resolved by
    `resolve_precision` when training starts."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 10
    precision: str | None = None

    # Numbers that may be 0 (every other number must be > 0); subclasses add theirs.
    may_be_zero: ClassVar[tuple[str, ...]] = ("seed",)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "precision":
                if v is not None and v not in PRECISIONS:
                    raise ValueError(f"precision should be one of {', '.join(PRECISIONS)}, got {v!r}")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and not (v >= 0 if f.name in self.may_be_zero else v > 0):
                raise ValueError(f"{f.name.replace('_', '-')} should be {'>=' if f.name in self.may_be_zero else '>'} 0, got {v}")


def run_settings(
    out: Path,
    config_name: str,
    checkpoint_name: str,
    model_key: str,
    model_over: dict[str, Any],
    train_over: dict[str, Any],
    resume: bool,
    world: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model fields, train fields) to build a run's configs from.

    Fresh run: the fields asked for; `out` must not hold `checkpoint_name` yet. Resume: the fields
    saved under `model_key` and "train" in `out/config_name`; the asked ones must agree with them,
    except `steps` (to train longer) and `precision`, which win. `batch_size` is per process:
    resumed by `world` processes instead of the saved "world_size", it is rescaled to keep the
    batch of a step. The precision comes out resolved for `device` (`resolve_precision`).
    """
    ckpt_path, cfg_path = out / checkpoint_name, out / config_name
    if not resume:
        if has_checkpoint(ckpt_path):
            raise TrainingError(
                f"{out} already holds a run ({checkpoint_name}); pass --resume to continue it or choose another --out"
            )
        return model_over, _with_precision(train_over, device)
    if not has_checkpoint(ckpt_path) or not cfg_path.exists():
        raise TrainingError(f"--resume: {out} holds no {checkpoint_name} and {config_name} to resume from")
    saved = read_run_config(cfg_path, model_key)
    saved_model, saved_train = saved[model_key], dict(saved["train"])
    saved_world = saved.get("world_size", 1)
    if world != saved_world:
        per_step = saved_train["batch_size"] * saved_world
        if per_step % world:
            raise TrainingError(
                f"--resume: {cfg_path} was trained by {saved_world} processes x batch {saved_train['batch_size']} "
                f"= {per_step} per step, which {world} processes cannot share evenly; launch a number of processes that divides {per_step}"
            )
        saved_train["batch_size"] = per_step // world
    clash = {k: (saved_model[k], v) for k, v in model_over.items() if saved_model.get(k) != v}
    # Resume may train longer, and switch precision (the weights and optimizer state are float32 either way).
    changeable = ("steps", "precision")
    clash.update({k: (saved_train.get(k), v) for k, v in train_over.items() if k not in changeable and saved_train.get(k) != v})
    if clash:
        raise TrainingError(f"--resume can only change --steps and --precision; these differ from {cfg_path} (saved, asked): {clash}")
    return saved_model, _with_precision({**saved_train, **train_over}, device)


def _with_precision(train: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    precision = resolve_precision(train.get("precision"), device)
    if precision == "bf16":  # asked for, or saved in the run resumed: the default picks it only where native
        _warn_emulated_bf16(device)
    return {**train, "precision": precision}


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the images of training step `step`: shuffled epochs, a function of (seed, step)
    alone, so that a resumed run sees exactly the batches an uninterrupted one would."""
    start = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, pos = divmod(start + filled, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - filled, n - pos)
        out[filled : filled + take] = perm[pos : pos + take]
        filled += take
    return out


def global_slice(batch: np.ndarray, dist: Dist) -> np.ndarray:
    """This rank's share of a step's batch of world * B indices: the B from rank * B on. Every rank
    draws the same batch from the same seed, so the ranks together see what one process would."""
    b = len(batch) // dist.world
    return batch[dist.rank * b : (dist.rank + 1) * b]


def read_metrics(path: Path, upto_step: int) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl up to `upto_step` (a line cut by a crash is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("step", 0) <= upto_step:
            records.append(r)
    return records


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: StepLoss,
    cfg: TrainConfig,
    checkpoint_path: Path,
    metrics_path: Path,
    step: int,
    resumed: bool,
    desc: str,
    unit: str,
    postfix: list[tuple[str, str, str]],
    progress: bool = True,
    dist: Dist | None = None,
    config: dict[str, Any] | None = None,
    validate: Validate | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Train from `step` to `cfg.steps`; returns (every metrics record up to the end, final step).

    step_loss(step) -> ({"loss": scalar to minimise, other scalars to log}, items in the batch of
    this rank). Records (step, the logged scalars, f"{unit}_per_s") go to metrics_path every
    cfg.log_every steps; those after `step` (from a run that crashed past its last checkpoint) are
    dropped, as those steps are trained again. postfix: (label, record key, format) shown on the bar.
    `model` is the module itself (not its DDP wrapper); checkpoints are stamped with `config`.
    Under torchrun (`dist`) only rank 0 writes, and its records are the ones returned.
    validate(step) -> scalars, called in eval mode without gradients before each checkpoint (every
    rank calls it); they join that step's metrics record.
    """
    dist = dist or Dist(torch.device("cpu"))
    records = _metrics_up_to(step, metrics_path, checkpoint_path) if dist.main else []
    if dist.main and dist.device.type == "cpu":
        _warn_busy_cores()
    autocast = _autocast(cfg.precision, dist.device)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, unit="step", disable=not (progress and dist.main), dynamic_ncols=True)
    last_ckpt = step if resumed else None
    with metrics_path.open("a") if dist.main else nullcontext() as metrics_file:
        while step < cfg.steps:
            t0 = time.perf_counter()
            with autocast():
                parts, items = step_loss(step)
            logged = _finite_means(parts, step, dist, checkpoint_path, last_ckpt)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            step += 1
            rate = items * dist.world / (time.perf_counter() - t0)
            bar.update(1)
            checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
            checked = _validated(model, validate, step, autocast) if validate is not None and checkpoint else {}
            if dist.main and (step % cfg.log_every == 0 or step == cfg.steps or checked):
                rec = {"step": step, **{k: float(v) for k, v in logged.items()}, f"{unit}_per_s": rate, **checked}
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
                records.append(rec)
                bar.set_postfix(**{label: f"{rec[key]:{fmt}}" for label, key, fmt in postfix})
            if checkpoint:
                if dist.main:
                    save_checkpoint(checkpoint_path, model, optimizer, step, config=config)
                last_ckpt = step
    bar.close()
    return records, step


def _metrics_up_to(step: int, metrics_path: Path, checkpoint_path: Path) -> list[dict[str, Any]]:
    """The metrics records up to `step`, the file cut back to them; what a writer killed mid-write
    left behind removed (the files themselves are intact)."""
    records = read_metrics(metrics_path, step)
    atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))
    remove_stale_temps(checkpoint_path.parent, [checkpoint_path.name, previous_path(checkpoint_path).name, metrics_path.name])
    return records


def _autocast(precision: str | None, device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """A fresh context for each forward pass: bfloat16 autocast on `device` in bf16, none in fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _finite_means(parts: dict[str, Tensor], step: int, dist: Dist, checkpoint_path: Path, last_ckpt: int | None) -> dict[str, Tensor]:
    """The step's scalars as means over the ranks (every rank takes the same decision on a
    non-finite loss); TrainingError naming the last good checkpoint when the loss is not finite."""
    values = dist.mean(torch.stack([v.detach().float() for v in parts.values()]))
    logged = dict(zip(parts, values))
    if not torch.isfinite(logged["loss"]):
        where = f"{checkpoint_path} (step {last_ckpt})" if last_ckpt is not None else "none was written yet"
        raise TrainingError(f"loss became {float(logged['loss'])} at step {step + 1}; training stopped. Last good checkpoint: {where}")
    return logged


def _validated(model: nn.Module, validate: Validate, step: int, autocast: Callable[[], AbstractContextManager[Any]]) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), autocast():
        checked = validate(step)
    model.train()
    return checked


@dataclass(frozen=True)
class RunFiles:
    """The files one trainer keeps in `folder` (their names are pegasus.rundir's)."""

    folder: Path
    config: str
    checkpoint: str
    metrics: str
    weights: str
    evaluation: str
    curves: str


class Trainer(ABC):
    """One training stage (the VQ-VAE, the prior, the classifier), as the hooks that `train` runs
    in this order: requested, configure, build, start, then on rank 0 final_weights, summarise
    and pictures. Each hook keeps on `self` what the later ones need.

    dist: this process's place under torchrun; None for a trainer that runs in one process and
    joins no process group (the classifier), whose loop then runs with `fit`'s default (a CPU Dist,
    so its bf16 autocast is the CPU's whatever `device` is).
    """

    desc: str
    """The progress bar's label, the command's name ("train-vqvae")."""
    unit: str
    """What a batch holds ("images"): the metric f"{unit}_per_s"."""
    model_key: str
    """The key of the model's settings in the config file."""
    files: RunFiles
    device: torch.device
    dist: Dist | None
    postfix: list[tuple[str, str, str]]
    """(label, metrics key, format) shown on the progress bar."""
    curves: dict[str, str]
    """Metrics key -> title of its loss curve."""

    @abstractmethod
    def requested(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model fields, train fields) the caller asked for, before `run_settings` weighs them
        against a run resumed; also what must be read, or refused, before that (the prior's
        latents, the classifier's data set)."""

    @abstractmethod
    def configure(self, model_fields: dict[str, Any], train_fields: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        """(the run's TrainConfig, the record of its config file before `stamp`) from the settled
        fields; the data the run needs is read here, and refused here if it does not fit."""

    @abstractmethod
    def build(self, resume: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model and its optimizer, built after torch.manual_seed(seed); a resumed run's
        checkpoint is loaded into them next."""

    @abstractmethod
    def start(self, resume: bool) -> tuple[StepLoss, Validate | None]:
        """`fit`'s step_loss and validate, once the model holds the weights to train from."""

    def final_weights(self, step: int) -> None:
        """Put the weights to keep into the model (by default those of the last step)."""

    @abstractmethod
    def summarise(self, step: int) -> dict[str, Any]:
        """The evaluation after `step` steps: written to the evaluation file, and returned."""

    def pictures(self) -> None:
        """Pictures written beside the evaluation (by default none)."""


def train(trainer: Trainer, resume: bool, progress: bool) -> dict[str, Any]:
    """Run `trainer`: settle its settings (`run_settings`), write its config file, build it, resume
    it from its checkpoint, `fit` it, then write its weights, evaluation and loss curves. Rank 0
    alone reads and writes the folder; every rank returns the evaluation."""
    files, dist = trainer.files, trainer.dist or Dist(trainer.device)
    model_over, train_over = trainer.requested()
    model_fields, train_fields = dist.on_main(lambda: run_settings(
        files.folder, files.config, files.checkpoint, trainer.model_key, model_over, train_over, resume, dist.world, trainer.device
    ))
    cfg, record = trainer.configure(model_fields, train_fields)
    config = stamp(record)
    dist.on_main(lambda: _write_config(files.folder / files.config, config))
    model_config = record[trainer.model_key]
    torch.manual_seed(cfg.seed)
    model, optimizer = trainer.build(resume)
    step = 0
    if resume:  # rank 0 reads the file; every rank loads the same bytes
        used, blob = dist.on_main(lambda: read_checkpoint(files.folder / files.checkpoint))
        step, _ = load_checkpoint(used, model, optimizer, map_location=trainer.device, data=blob, config=model_config)
    step_loss, validate = trainer.start(resume)
    records, step = fit(
        model, optimizer, step_loss, cfg, files.folder / files.checkpoint, files.folder / files.metrics, step, resume,
        desc=trainer.desc, unit=trainer.unit, postfix=trainer.postfix, progress=progress, dist=trainer.dist,
        config=model_config, validate=validate,
    )
    return dist.on_main(lambda: _finish(trainer, model, model_config, records, step))


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(config, indent=2))


def _finish(trainer: Trainer, model: nn.Module, model_config: dict[str, Any], records: list[dict[str, Any]], step: int) -> dict[str, Any]:
    files = trainer.files
    trainer.final_weights(step)
    save_weights(files.folder / files.weights, model, metadata={"config": json.dumps(model_config)})
    summary = trainer.summarise(step)
    atomic_write_text(files.folder / files.evaluation, json.dumps(summary, indent=2))
    trainer.pictures()
    if records:
        save_loss_curves(records, files.folder / files.curves, trainer.curves)
    return summary

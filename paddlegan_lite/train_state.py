"""The training state, with one owner: nets, optimizers, EMA generator, AMP scalers, counters, the
fixed sample noise and the best FID, turned into (JSON state, dicts of arrays) and back. Whatever
writes or reads a training checkpoint (the trainer, export, eval, tools/convert_weights.py) goes
through here; checkpoint.py only puts dicts of arrays on disk, atomically."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite.checkpoint import CheckpointError
from paddlegan_lite.config import (
    WEIGHT_CHOICES,
    Config,
    config_from_dict,
    config_to_dict,
    model_differences,
)
from paddlegan_lite.errors import UserError

# What a training checkpoint must hold: its JSON keys and its files of arrays (netG_ema only
# where the run kept an EMA generator).
STATE_KEYS = ("config", "epoch", "batch_in_epoch")
TENSOR_PARTS = ("netG", "netD", "optG", "optD", "extra")


@dataclass(eq=False)  # compared by identity: tensors have no single truth value for ==
class TrainState:
    """Everything a run needs to continue exactly where it stopped. The nets and optimizers are
    the trainer's own objects: loading sets their values in place, never replaces them."""

    cfg: Config
    netG: nn.Layer
    netD: nn.Layer
    optG: paddle.optimizer.Optimizer
    optD: paddle.optimizer.Optimizer
    netG_ema: nn.Layer | None = None  # train.ema_decay > 0: the average samples/eval/export use
    scalerG: paddle.amp.GradScaler | None = None  # train.amp=fp16: one loss scaler per optimizer
    scalerD: paddle.amp.GradScaler | None = None
    fixed_z: paddle.Tensor | None = None  # [num_samples, nz]: the noise of every sample grid
    fixed_labels: paddle.Tensor | None = None  # int64 [num_samples] for conditional models
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained: a resume skips them
    best_fid: float = math.inf

    @classmethod
    def start(cls, cfg: Config, netG, netD, optG, optD) -> TrainState:
        """A fresh run's state around built nets and optimizers: the fixed sample noise drawn from
        `seed`, plus an EMA copy of G and loss scalers where the config asks for them."""
        fixed_z, fixed_labels = fixed_inputs(cfg, netG.nz)
        netG_ema = copy.deepcopy(netG) if cfg.train.ema_decay > 0 else None
        fp16 = cfg.train.amp == "fp16"  # bf16 has float32's range: no loss scaling
        scalerG = paddle.amp.GradScaler() if fp16 else None
        scalerD = paddle.amp.GradScaler() if fp16 else None
        return cls(cfg, netG, netD, optG, optD, netG_ema, scalerG, scalerD, fixed_z, fixed_labels)

    def step_seed(self) -> int:
        """The seed of this step's random draws: a function of (seed, step) alone, so a resumed
        run draws what an uninterrupted one would have."""
        return (self.cfg.seed * 1_000_003 + self.step) % (2**31 - 1)

    # ------------------------------------------------------------------ arrays out and in
    def to_arrays(self) -> tuple[dict, dict]:
        """(state for state.json, {part: {name: numpy array}}): the whole checkpoint's content."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "config": config_to_dict(self.cfg),
            # every random draw is seeded from (seed, step), so these two restore the RNG stream
            "rng": {"seed": self.cfg.seed, "step_seed": self.step_seed()},
            "best_fid": self.best_fid if math.isfinite(self.best_fid) else None,
        }
        if self.scalerD is not None:
            state["amp_scalers"] = {"d": _plain(self.scalerD), "g": _plain(self.scalerG)}
        extra = {"fixed_z": self.fixed_z.numpy()}
        if self.fixed_labels is not None:
            extra["fixed_labels"] = self.fixed_labels.numpy()
        tensors = {
            "netG": ckpt.layer_arrays(self.netG),
            "netD": ckpt.layer_arrays(self.netD),
            "optG": ckpt.optimizer_arrays(self.optG, self.netG),
            "optD": ckpt.optimizer_arrays(self.optD, self.netD),
            "extra": extra,
        }
        if self.netG_ema is not None:
            tensors["netG_ema"] = ckpt.layer_arrays(self.netG_ema)
        return state, tensors

    def load_arrays(self, state: dict, tensors: dict, path: str | Path = "(in memory)") -> None:
        """Take over `to_arrays`'s output, refusing what is not a training checkpoint or was made
        with another model config (named, with both values) before anything is changed.

        An EMA switched on at resume starts at G; AMP scaler state is taken only where a scaler
        is active here and was active there."""
        missing = [k for k in STATE_KEYS if k not in state]
        missing += [k for k in TENSOR_PARTS if k not in tensors]
        if missing or "fixed_z" not in tensors["extra"]:
            raise CheckpointError(
                f"checkpoint {path} lacks {missing or ['fixed_z']}: not a training checkpoint"
            )
        diffs = model_differences(self.cfg, saved_config(state, path))
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} was made with another model config than this run: "
                f"{', '.join(diffs)}"
            )
        ckpt.load_layer_arrays(self.netG, tensors["netG"], "generator")
        ckpt.load_layer_arrays(self.netD, tensors["netD"], "discriminator")
        if self.netG_ema is not None:
            ema = tensors.get("netG_ema") or tensors["netG"]  # switched on at resume: G's
            ckpt.load_layer_arrays(self.netG_ema, ema, "EMA generator")
        ckpt.load_optimizer_arrays(self.optG, self.netG, tensors["optG"])
        ckpt.load_optimizer_arrays(self.optD, self.netD, tensors["optD"])
        scalers = state.get("amp_scalers") or {}
        for key, scaler in (("d", self.scalerD), ("g", self.scalerG)):
            if scaler is not None and scalers.get(key):  # empty where the scaler was inactive
                scaler.load_state_dict(scalers[key])
        self.fixed_z = paddle.to_tensor(tensors["extra"]["fixed_z"])
        if "fixed_labels" in tensors["extra"]:
            self.fixed_labels = paddle.to_tensor(tensors["extra"]["fixed_labels"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        if state.get("best_fid") is not None:
            self.best_fid = float(state["best_fid"])

    # ------------------------------------------------------------------ on disk
    def save(self, ckpt_dir: str | Path) -> Path:
        """Write this step's checkpoint folder in `ckpt_dir` (atomically) and return its path."""
        state, tensors = self.to_arrays()
        return ckpt.save_checkpoint(ckpt_dir, self.step, state, tensors)

    def load(self, path: str | Path) -> None:
        """Continue from the checkpoint folder at `path` (see load_arrays for what is refused)."""
        state, tensors = ckpt.load_checkpoint(path)
        self.load_arrays(state, tensors, path)


def saved_config(state: dict, path: str | Path) -> Config:
    """The config a checkpoint was trained with, validated as a config file would be."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path}: {ckpt.STATE_FILE} holds no config")
    return config_from_dict(state["config"], source=f"{path}/{ckpt.STATE_FILE}")


def load_generator(checkpoint: str | Path, weights: str = "auto"):
    """(netG in eval mode, the run's Config, state dict, which weights: "netG" or "netG_ema"),
    built from the checkpoint's own config: what export and eval need of a training checkpoint.

    weights: "auto" takes the EMA generator when the run kept one, "ema" insists on it, "raw"
    takes G's own weights (to measure what the EMA brings)."""
    from paddlegan_lite.models import build_models, recompute_batch_norm_statistics

    if weights not in WEIGHT_CHOICES:
        raise UserError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    state, tensors = ckpt.load_checkpoint(checkpoint)
    run_cfg = saved_config(state, checkpoint)
    has_ema = bool(tensors.get("netG_ema"))
    if weights == "ema" and not has_ema:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds no EMA generator (train.ema_decay was 0 in its run)"
        )
    key = "netG_ema" if has_ema and weights != "raw" else "netG"
    if key not in tensors:
        raise CheckpointError(f"checkpoint {checkpoint} lacks netG: not a training checkpoint")
    netG, _ = build_models(run_cfg.model)
    ckpt.load_layer_arrays(netG, tensors[key], "generator")
    # eval mode (BatchNorm with running statistics: one image never depends on its batch), the
    # statistics those of these very weights (the trainer's samples and eval do the same)
    recompute_batch_norm_statistics(netG)
    return netG, run_cfg, state, key


def fixed_inputs(cfg: Config, nz: int):
    """The noise [N, nz] (and labels int64 [N], else None) behind every sample grid, drawn from
    `seed`; for conditional models one row per class: row k holds samples of class k."""
    paddle.seed(cfg.seed)
    classes = cfg.model.num_classes
    if not classes:
        return paddle.randn([cfg.train.num_samples, nz]), None
    per_row = sample_grid_nrow(cfg)
    z = paddle.randn([classes * per_row, nz])
    return z, paddle.to_tensor(np.repeat(np.arange(classes), per_row).astype("int64"))


def sample_grid_nrow(cfg: Config) -> int | None:
    """Images per row of a conditional model's sample grid (one row per class); None: square."""
    if not cfg.model.num_classes:
        return None
    return max(1, cfg.train.num_samples // cfg.model.num_classes)


def _plain(scaler) -> dict:
    """A GradScaler's state as JSON values (its loss scale is a one-element array)."""
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in scaler.state_dict().items()}

"""The training loop: alternate Adam updates of the discriminator and the generator.

`train(cfg, resume)` builds everything from a config and runs `GANTrainer.fit()`, which reads top
to bottom: resume, then per batch a D step and a G step, then logging, sampling and saving at
their intervals. One trainer serves every family: with `model.num_classes > 0` G draws a class
per sample (`G(z, labels)`) and D sees the class too (`D(x, labels)`), and where D names the
class (AC-GAN's second head) its cross-entropy joins both losses. Under
`paddle.distributed.launch` every rank runs the same loop on its slice of each global batch
(see distributed.py); rank 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F

from paddlegan_lite import checkpoint as ckpt
from paddlegan_lite import distributed, run_folder
from paddlegan_lite.augment import diff_augment, random_hflip
from paddlegan_lite.cli import exit_now
from paddlegan_lite.config import Config, check_run, diffaugment_policies, dump_config
from paddlegan_lite.errors import UserError
from paddlegan_lite.images import make_grid, save_png, to_uint8
from paddlegan_lite.logger import RunLogger, log
from paddlegan_lite.losses import (
    d_loss,
    d_output_mean,
    g_loss,
    gradient_penalty,
    r1_penalty,
)
from paddlegan_lite.models import recompute_batch_norm_statistics
from paddlegan_lite.models.layers import double_backward_mode
from paddlegan_lite.train_state import TrainState, sample_grid_nrow

# ops auto_cast(fp16) runs in float16 beyond Paddle's own O1 white list (see GANTrainer.autocast)
AMP_FP16_EXTRA_WHITE_LIST = {"conv2d_transpose"}


class EpochBatchSampler:
    """Shuffled index batches, the order a pure function of (seed, epoch): resumable mid-epoch.

    With several processes every rank draws the same permutation, cuts it into global batches of
    batch_size * world_size and yields its own slice of each, so the ranks' batches together are
    exactly the batches of one process with the global batch size.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.global_batch = rank, batch_size * world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return self.num_items // self.global_batch - self.skip  # drop_last: BatchNorm wants full

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        for b in range(self.skip, self.num_items // self.global_batch):
            start = b * self.global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()


@contextmanager
def frozen(net):
    """No weight gradients for `net` inside (the G step needs D's input gradient only)."""
    params = [p for p in net.parameters() if not p.stop_gradient]
    for p in params:
        p.stop_gradient = True
    try:
        yield
    finally:
        for p in params:
            p.stop_gradient = False


class GANTrainer:
    """Trains a (netG, netD) pair, conditional when cfg.model.num_classes > 0; receives
    already-built nets and optimizers. What a checkpoint holds (nets, optimizers, EMA, scalers,
    counters, fixed noise, best FID) lives in `self.state`, its one owner (train_state.py)."""

    def __init__(self, cfg: Config, netG, netD, optG, optD, dataset, run_dir: str | Path):
        self.cfg, self.dataset = cfg, dataset
        # the nets' DataParallel wrappers (the nets themselves with one process): the training
        # forward passes go through them so that gradients are averaged over ranks
        self.dp_netG, self.dp_netD = distributed.wrap(netG), distributed.wrap(netD)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.global_batch = cfg.train.batch_size * self.world_size
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.loss_kind = cfg.train.loss
        self.num_classes = cfg.model.num_classes  # 0: unconditional
        self.diffaugment = diffaugment_policies(cfg.train.diffaugment)  # [] when off
        # optimizer.lr_decay scales these (lr_multiplier included) every step
        self.base_lrs = (optG.get_lr(), optD.get_lr())
        self.state = TrainState.start(cfg, netG, netD, optG, optD)
        # buffers the EMA copies from G each update: the saved ones (spectral norm's u and v),
        # not unsaved constants
        self._ema_buffers = (
            [
                (ema_b, b)
                for (name, ema_b), (_, b) in zip(
                    self.state.netG_ema.named_buffers(), netG.named_buffers()
                )
                if name in netG.state_dict()
            ]
            if self.state.netG_ema is not None
            else []
        )
        self.evaluator = None
        self._stop_signal = None
        self._deadline = None  # train.max_minutes: perf_counter() time to stop at
        self._out_of_time = False
        self._saved_step = None

    # read-only views of the state for callers (tests, benches); the trainer names self.state
    netG = property(lambda self: self.state.netG)
    netD = property(lambda self: self.state.netD)
    netG_ema = property(lambda self: self.state.netG_ema)
    optG = property(lambda self: self.state.optG)
    optD = property(lambda self: self.state.optD)
    step = property(lambda self: self.state.step)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_from: str | Path | None = None) -> dict:
        """Train until epochs/max_steps are done, train.max_minutes is up or a stop signal
        arrives, then save; returns the last logged metrics."""
        t, s = self.cfg.train, self.state
        if resume_from is not None:
            self.load(resume_from)
        distributed.check_same(s.step, "the step to resume from")
        total_steps = self.total_steps(self.steps_per_epoch())
        sampler = EpochBatchSampler(
            len(self.dataset), t.batch_size, self.cfg.seed, self.rank, self.world_size
        )
        if distributed.is_main():
            logger = RunLogger(self.run_dir, resume_step=s.step if resume_from else None)
        else:
            logger = _NoOutput()  # rank 0 writes the run's logs; no VisualDL writer here
        first_step = s.step + 1
        meter = _Meter(first_step=first_step)
        if self.cfg.eval.interval and distributed.is_main():
            self.evaluator = self.build_evaluator()
        last = {}
        self._install_signal_handlers()
        if t.max_minutes:
            self._deadline = time.perf_counter() + 60 * t.max_minutes
        try:
            while s.step < total_steps and not self.stop_requested():
                sampler.set_epoch(s.epoch, s.batch_in_epoch)
                for real, labels in self.make_loader(sampler):
                    self.set_learning_rates(total_steps)
                    # this step's draws are a function of (seed, step), so a resumed run draws
                    # what an uninterrupted one would: the noise (every rank the global batch's,
                    # keeping its slice), then each rank its own (augmentation, dropout)
                    paddle.seed(s.step_seed())
                    z, gen_labels = self.sample_latent(real.shape[0])
                    distributed.seed_per_rank(s.step_seed())
                    if self.cfg.data.hflip:
                        real = random_hflip(real)

                    # (1) Update D: maximise log D(x) + log(1 - D(G(z))) (or the chosen loss)
                    loss_d, d_real, d_fake, fake = self.d_step(real, labels, z, gen_labels)

                    # (2) Update G: maximise log D(G(z)), reusing the fake batch D just saw
                    loss_g = None
                    if (s.step + 1) % t.d_steps == 0:
                        loss_g = self.g_step(fake, gen_labels)
                        if s.netG_ema is not None:
                            self.update_ema()

                    s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + 1
                    if self.cfg.distributed.sync_bn and s.step == first_step:
                        distributed.check_batchnorm_synced(s.netG, s.netD)
                    meter.add(loss_d, loss_g, d_real, d_fake, self.global_batch)
                    at_log_step = s.step % t.log_interval == 0
                    if at_log_step:
                        last = self.log_metrics(logger, meter, total_steps)
                    self.save_at_intervals(logger, meter)  # samples, checkpoint, evaluation
                    if s.step >= total_steps or self.stop_requested(check_ranks=at_log_step):
                        break
                else:
                    s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            if meter.count and self._stop_signal is None:
                last = self.log_metrics(logger, meter, total_steps)  # since the last log line
            self.save_at_end(logger, meter)
        finally:
            self._restore_signal_handlers()
            logger.close()
        return last

    def steps_per_epoch(self) -> int:
        """Full global batches in the dataset (the last partial one is dropped)."""
        steps = len(self.dataset) // self.global_batch
        if steps == 0:
            per_step = f"train.batch_size={self.cfg.train.batch_size}"
            if self.world_size > 1:
                per_step += f" x {self.world_size} processes"
            raise UserError(f"dataset has {len(self.dataset)} images, fewer than {per_step}")
        return steps

    def save_at_intervals(self, logger, meter) -> None:
        """After a step: the sample grid, checkpoint and evaluation whose interval it ends; the
        last two check the losses first, so no checkpoint or FID follows a nan/inf loss."""
        t, step = self.cfg.train, self.state.step
        if step % t.sample_interval == 0:
            self.save_samples(logger)
        if step % t.save_interval == 0:
            self.check_finite(meter)
            self.save()
        if self.evaluator is not None and step % self.cfg.eval.interval == 0:
            self.check_finite(meter)
            self.evaluate(logger)

    def save_at_end(self, logger, meter) -> None:
        """Say why the run stopped, then write the last step's sample grid and checkpoint (unless
        its interval just did); a stop signal lands here too, so Ctrl-C keeps the work done."""
        t, step = self.cfg.train, self.state.step
        if self._stop_signal is not None:
            log.info(f"{self._stop_signal} received: saving step {step} and stopping")
        if self._out_of_time:
            log.info(f"train.max_minutes={t.max_minutes:g} reached at step {step}")
        self.check_finite(meter)
        if step % t.sample_interval:
            self.save_samples(logger)
        if step % t.save_interval:
            self.save()
        log.info(f"checkpoint: {self.ckpt_dir / 'latest'} (step {step})")

    def total_steps(self, steps_per_epoch: int) -> int | float:
        return total_steps(self.cfg, steps_per_epoch)

    def set_learning_rates(self, total_steps: int | float) -> None:
        """optimizer.lr_decay=linear: both rates fall linearly from their base to 0 at the last
        step (as SNGAN trains; a function of the step, so resuming continues the schedule)."""
        if self.cfg.optimizer.lr_decay != "linear":
            return
        factor = max(0.0, 1.0 - self.state.step / total_steps)
        for optimizer, base in zip((self.state.optG, self.state.optD), self.base_lrs):
            optimizer.set_lr(base * factor)

    def make_loader(self, sampler):
        """Batches (images, labels) in the sampler's order. In-memory datasets hand out whole
        batches with one vectorised `get_batch` (several times the per-item DataLoader's rate:
        bench/loader_speed.py).
        With data.num_workers > 0 items are decoded in worker processes; an item's UserError
        (a bad image) comes back as data and is raised here as the same one-line error."""
        from paddlegan_lite.datasets import CaughtErrors, collate_or_error, raise_caught

        if self.cfg.data.num_workers == 0 and hasattr(self.dataset, "get_batch"):
            return (
                tuple(paddle.to_tensor(a) for a in self.dataset.get_batch(indices))
                for indices in sampler
            )
        loader = paddle.io.DataLoader(
            CaughtErrors(self.dataset),
            batch_sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            use_shared_memory=False,
            collate_fn=collate_or_error,
        )
        return (raise_caught(batch) for batch in loader)

    def stop_requested(self, check_ranks: bool = True) -> bool:
        """Whether SIGINT/SIGTERM reached this or (several processes) any rank, or the run is past
        train.max_minutes (on any rank: their clocks differ a little). With several
        processes the ranks agree only where `check_ranks` (log steps, where the meter reads the
        device anyway): an all-reduce read back every step would stall each GPU's queue once per
        step. Every rank asks at the same steps and takes the all-reduced answer, never its own
        flag, which a signal may set during the all-reduce: so all ranks stop after one step."""
        if self.world_size > 1 and not check_ranks:
            return False
        # a stop signal outranks the clock: it is what the log then names
        if distributed.any_rank(self._stop_signal is not None):
            self._stop_signal = self._stop_signal or "a stop signal (on another rank)"
            return True
        if self._deadline is None:
            return False
        self._out_of_time = distributed.any_rank(time.perf_counter() >= self._deadline)
        return self._out_of_time

    # ------------------------------------------------------------------ one step
    def sample_latent(self, batch_size: int):
        """Noise z ~ N(0, 1) [B, nz] and, for conditional models, classes int64 [B] (else None).

        Every rank draws the noise of the whole global batch (same step seed) and keeps its own
        slice: ranks get different noise, and the run matches one process with the global batch.
        """
        n = batch_size * self.world_size
        z = distributed.own_slice(paddle.randn([n, self.state.netG.nz]))
        if not self.num_classes:
            return z, None
        labels = paddle.randint(0, self.num_classes, [n], dtype="int64")
        return z, distributed.own_slice(labels)

    def generate(self, z, labels=None, net=None):
        return (net or self.state.netG)(z, labels)

    def sample_net(self):
        """The generator that samples, eval and export see: the EMA one when kept."""
        return self.state.netG_ema if self.state.netG_ema is not None else self.state.netG

    def sampling_copy(self):
        """A copy of sample_net() in eval mode with BatchNorm statistics of its own weights
        (models.recompute_batch_norm_statistics), as export and tools/eval.py load a checkpoint:
        the grids and eval score what a user exports. A copy, so the run's own nets and
        checkpoints are what training alone makes of them."""
        return recompute_batch_norm_statistics(copy.deepcopy(self.sample_net()))

    def ema_decay(self) -> float:
        """train.ema_decay, warmed up as min(decay, (1 + step) / (10 + step)): a plain 0.999
        would still give the random initial weights 0.999^780 = 46% of the average after 780
        steps, and its samples score far worse than G's
        (bench/RESULTS.md#measurements-behind-the-code); warmed up, the EMA follows G early and
        averages over the last ~1 / (1 - decay) steps later."""
        step = self.state.step
        return min(self.cfg.train.ema_decay, (1 + step) / (10 + step))

    def update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * G for weights; BatchNorm statistics and buffers
        (spectral norm's power-iteration vectors u, v) are copied."""
        decay = self.ema_decay()
        with paddle.no_grad():
            for ema_p, p in zip(self.state.netG_ema.parameters(), self.state.netG.parameters()):
                if p.stop_gradient:  # BatchNorm running mean/variance
                    ema_p.set_value(p)
                else:
                    ema_p.set_value(ema_p * decay + p * (1.0 - decay))
            for ema_b, b in self._ema_buffers:
                ema_b.set_value(b)

    def d_step(self, real, labels, z, gen_labels):
        """One update of D on a real batch and G(z, gen_labels); returns (loss, D's mean output on
        real and on fake, the fake batch for the G step)."""
        # through the DataParallel wrappers: this backward averages D's gradients over ranks, the
        # G step's backward (which reaches G through `fake`) averages G's
        with self.autocast():
            fake = self.generate(z, gen_labels, net=self.dp_netG)
            real_in = diff_augment(real, self.diffaugment)  # D sees augmented images only
            real_out = self.dp_netD(real_in, self.condition(labels))
            fake_in = diff_augment(fake.detach(), self.diffaugment)
            fake_out = self.dp_netD(fake_in, gen_labels)
        # losses, logs and checkpoints in float32 whatever precision D ran in (train.amp)
        loss, real_logits, fake_logits = self.d_objective(
            as_float32(real_out), as_float32(fake_out), labels, gen_labels
        )
        penalty = self.d_penalty(real_in, fake_in, self.condition(labels))  # gp_weight, r1_gamma
        if penalty is not None:
            loss = loss + penalty
        self.backward_and_step(loss, self.state.optD, self.state.scalerD)
        d_real = d_output_mean(self.loss_kind, real_logits.detach())
        d_fake = d_output_mean(self.loss_kind, fake_logits.detach())
        return loss.detach(), d_real, d_fake, fake

    def g_step(self, fake, gen_labels):
        # D's own layer, not its DataParallel wrapper: frozen D gets no weight gradients here,
        # so there is nothing of D's to average (the G step's gradient reaches G through `fake`)
        netD = self.state.netD
        with frozen(netD):
            with self.autocast():
                # fresh draws; G's gradient flows back through the augmentation
                fake_out = netD(diff_augment(fake, self.diffaugment), gen_labels)
            loss = self.g_objective(as_float32(fake_out), gen_labels)
            self.backward_and_step(loss, self.state.optG, self.state.scalerG)
        return loss.detach()

    def autocast(self):
        """train.amp: forward passes in float16/bfloat16 where Paddle deems it safe (O1)."""
        if self.cfg.train.amp == "off":
            return contextlib.nullcontext()
        if self.cfg.train.amp == "bf16":
            return paddle.amp.auto_cast(level="O1", dtype="bfloat16")
        # Paddle's O1 list leaves conv2d_transpose (all of G's upsampling) in float32; PyTorch's
        # autocast runs conv_transpose2d in float16, and Paddle's cuDNN kernel has float16 (not
        # bfloat16), so float16 adds it. bench/gpu_check.py times G both ways on a real GPU.
        return paddle.amp.auto_cast(
            level="O1", dtype="float16", custom_white_list=AMP_FP16_EXTRA_WHITE_LIST
        )

    @staticmethod
    def backward_and_step(loss, optimizer, scaler) -> None:
        optimizer.clear_grad(set_to_zero=False)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # float16: scale the loss so small gradients survive; skip steps that overflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def condition(self, labels):
        """The dataset's labels as D's condition: int64 [B] for conditional models, else None."""
        return labels.reshape([-1]).astype("int64") if self.num_classes else None

    def d_penalty(self, real, fake, labels):
        """Gradient penalties on D (losses.py) on the images D just saw, in float32; 0 if off.
        A conditional D sees the real images' classes, for the interpolates too (as StudioGAN).

        R1 with train.r1_interval = k > 1 runs on every k-th D step only, scaled by k (lazy
        regularisation, Karras et al. 2020), so its average weight stays r1_gamma. None where
        no penalty applies this step (nothing added to the loss)."""
        t = self.cfg.train
        with_gp = t.gp_weight > 0
        with_r1 = t.r1_gamma > 0 and self.state.step % t.r1_interval == 0
        if not (with_gp or with_r1):
            return None

        def adversarial_logits(x):  # AC-GAN's class logits are not penalised
            with self.autocast(), double_backward_mode(self.netD):  # fast BatchNorm double grad
                out = self.dp_netD(x, labels)
            return split_d_output(as_float32(out))[0]

        terms = []
        if with_gp:
            terms.append(gradient_penalty(adversarial_logits, real, fake, t.gp_weight))
        if with_r1:
            terms.append(r1_penalty(adversarial_logits, real, t.r1_gamma * t.r1_interval))
        return sum(terms[1:], terms[0])

    def d_objective(self, real_out, fake_out, labels, gen_labels):
        """(loss, real logits, fake logits) from D's outputs on real and fake images; a D that
        also names the class adds the class cross-entropy: AC-GAN's on both (Odena et al. 2016),
        a dual projection D's on real images only (Han et al. 2021; a classifier fitted to G's
        samples too rewards samples easy to classify rather than true to their class)."""
        (real_logits, real_cls), (fake_logits, fake_cls) = map(split_d_output, (real_out, fake_out))
        loss = d_loss(self.loss_kind, real_logits, fake_logits, self.cfg.train.real_label)
        if real_cls is not None:
            classes = F.cross_entropy(real_cls, labels.reshape([-1, 1]))
            if not self.cfg.model.dual_projection:
                classes = classes + F.cross_entropy(fake_cls, gen_labels.reshape([-1, 1]))
            loss = loss + self.cfg.train.cls_weight * classes
        return loss, real_logits, fake_logits

    def g_objective(self, fake_out, gen_labels):
        fake_logits, fake_cls = split_d_output(fake_out)
        loss = g_loss(self.loss_kind, fake_logits)
        if fake_cls is not None:
            loss = loss + self.cfg.train.cls_weight * F.cross_entropy(
                fake_cls, gen_labels.reshape([-1, 1])
            )
        return loss

    # ------------------------------------------------------------------ outputs
    def check_finite(self, meter) -> None:
        """Stop on a nan/inf loss before anything logs or saves it; the last checkpoint stays."""
        bad = meter.first_non_finite()
        if bad is None:
            return
        step, loss_d, loss_g = bad
        kept = ckpt.find_latest(self.ckpt_dir)
        raise UserError(
            f"non-finite loss at step {step} (loss_d={loss_d}, loss_g={loss_g}): stopped without "
            f"saving; last good checkpoint: {kept or 'none'} (try a lower learning rate)"
        )

    def log_metrics(self, logger: RunLogger, meter, total_steps: int | float) -> dict:
        self.check_finite(meter)
        step, epoch = self.state.step, self.state.epoch
        values = meter.flush(next_step=step + 1)
        remaining = (total_steps - step) * values.pop("sec_per_step")
        if self._deadline is not None:  # train.max_minutes may end the run first
            remaining = min(remaining, max(0.0, self._deadline - time.perf_counter()))
        of_total = f"/{total_steps}" if math.isfinite(total_steps) else ""
        line = (
            f"epoch {epoch} step {step}{of_total} loss_d {values['loss_d']:.4f} "
            f"loss_g {values['loss_g']:.4f} D(x) {values['d_real']:.3f} "
            f"D(G(z)) {values['d_fake']:.3f} {values['images_per_sec']:.1f} img/s "
            f"ETA {_format_seconds(remaining)}"
        )
        values["epoch"] = epoch
        logger.scalars(step, values, line)
        return values

    def save_samples(self, logger: RunLogger) -> Path | None:
        if not distributed.is_main():
            return None  # rank 0 draws the grids
        net = self.sampling_copy()  # eval mode, as the exported model runs
        with paddle.no_grad():
            images = self.generate(self.state.fixed_z, self.state.fixed_labels, net=net).numpy()
        grid = make_grid(to_uint8(images), nrow=sample_grid_nrow(self.cfg))
        path = save_png(self.run_dir / "samples" / f"step_{self.state.step:08d}.png", grid)
        logger.image("samples", grid, self.state.step)
        return path

    # ------------------------------------------------------------------ evaluation
    def build_evaluator(self):
        from paddlegan_lite.evaluation import build_evaluator

        e, m = self.cfg.eval, self.cfg.model
        log.info(f"eval: {e.extractor} features, {e.num_samples} samples every {e.interval} steps")
        return build_evaluator(
            self.cfg.data, m.image_size, m.channels, m.nz, m.num_classes, e, self.dataset
        )

    def evaluate(self, logger: RunLogger) -> dict:
        """FID/KID/... of the sample generator; a new lowest FID saves and points `best` at it."""
        from paddlegan_lite.evaluation import generator_fn

        start = time.perf_counter()
        report = self.evaluator(generator_fn(self.sampling_copy()))
        metrics = {k: v for k, v in report.items() if isinstance(v, float)}  # not class_hist
        step = self.state.step
        line = f"eval step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        logger.scalars(step, metrics, f"{line} ({time.perf_counter() - start:.0f} s)", "eval")
        if metrics["fid"] < self.state.best_fid:
            self.state.best_fid = metrics["fid"]
            path = self.save()
            ckpt.point_link(self.ckpt_dir / "best", path.name)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Checkpoint this step through the state (once per step: a second call returns the same
        folder), keeping the newest train.keep_checkpoints."""
        step = self.state.step
        if self._saved_step == step or not distributed.is_main():
            return self.ckpt_dir / f"step_{step:08d}"  # rank 0 writes what all ranks hold
        path = self.state.save(self.ckpt_dir)
        self._saved_step = step
        ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
        return path

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint of this model config (train_state.py says what it checks)."""
        self.state.load(path)
        self._saved_step = self.state.step
        log.info(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch})")

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM: finish the step, save, exit cleanly. A second one: stop now
        (with several processes only a second SIGINT: the launcher's Ctrl-C sends each rank
        SIGTERM three times 0.2 s apart, and SIGKILL only after 30 s)."""
        self._previous_handlers = {}

        def request_stop(signum, frame):
            if self._stop_signal is not None and (signum == signal.SIGINT or self.world_size < 2):
                exit_now(signum)
            self._stop_signal = self._stop_signal or signal.Signals(signum).name

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[sig] = signal.signal(sig, request_stop)
        except ValueError:
            pass  # not the main thread: leave signals alone

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)


def split_d_output(out):
    """(real/fake logits [N], class logits [N, K] or None) from D's output: a tensor of logits,
    or (AC-GAN) the pair of its two heads."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None


def as_float32(out):
    """D's output (a tensor, or a tuple of them for conditional models) in float32."""
    if isinstance(out, (tuple, list)):
        return type(out)(as_float32(o) for o in out)
    return out if out.dtype == paddle.float32 else out.astype("float32")


class _Meter:
    """Keeps each step's statistics as device tensors and reads them back (one sync) only when
    logging or saving: no per-step host sync, and the first non-finite loss is still found."""

    def __init__(self, first_step: int = 1):
        self._reset(first_step)

    def _reset(self, first_step: int) -> None:
        self.first_step = first_step  # the step the first row belongs to
        self.rows = []  # per step: [loss_d, loss_g, d_real, d_fake] on the device
        self.host = np.zeros((0, 4))
        self.g_steps = []  # whether each step updated G (with train.d_steps > 1 some do not)
        self.images = 0
        self.start = time.perf_counter()

    @property
    def count(self) -> int:
        return len(self.g_steps)

    def add(self, loss_d, loss_g, d_real, d_fake, batch_size: int) -> None:
        g_value = loss_g if loss_g is not None else paddle.zeros_like(loss_d)
        row = [v.astype("float32") for v in (loss_d, g_value, d_real, d_fake)]
        self.rows.append(paddle.stack(row).reshape([4]))
        self.g_steps.append(loss_g is not None)
        self.images += batch_size

    def read(self) -> np.ndarray:
        """All rows so far as float64 [steps, 4]."""
        if self.rows:
            fresh = paddle.stack(self.rows).numpy().astype(np.float64)
            self.host, self.rows = np.concatenate([self.host, fresh]), []
        return self.host

    def first_non_finite(self):
        """(step, loss_d, loss_g) of the first step whose loss is nan/inf, or None."""
        losses = self.read()[:, :2]
        bad = np.flatnonzero(~np.isfinite(losses).all(axis=1))
        if not len(bad):
            return None
        return self.first_step + int(bad[0]), float(losses[bad[0], 0]), float(losses[bad[0], 1])

    def flush(self, next_step: int) -> dict:
        """Means since the last flush, then start over at `next_step`."""
        rows, elapsed = self.read(), max(time.perf_counter() - self.start, 1e-9)
        g_rows = rows[np.asarray(self.g_steps, dtype=bool), 1]
        values = {
            "loss_d": float(rows[:, 0].mean()),
            "loss_g": float(g_rows.mean()) if len(g_rows) else float("nan"),
            "d_real": float(rows[:, 2].mean()),
            "d_fake": float(rows[:, 3].mean()),
            "images_per_sec": self.images / elapsed,
            "sec_per_step": elapsed / max(self.count, 1),
        }
        self._reset(next_step)
        return values


class _NoOutput:
    """The RunLogger of ranks other than 0: rank 0 writes metrics, VisualDL and samples."""

    def scalars(self, *args, **kwargs) -> None:
        pass

    def image(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def total_steps(cfg: Config, steps_per_epoch: int) -> int | float:
    """The run's length: train.epochs of `steps_per_epoch`, capped by train.max_steps; math.inf
    when only train.max_minutes bounds it."""
    t = cfg.train
    by_epochs = t.epochs * steps_per_epoch if t.epochs else math.inf
    by_cap = t.max_steps if t.max_steps else math.inf
    steps = min(by_epochs, by_cap)
    return int(steps) if math.isfinite(steps) else steps


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------- building a run
def build_optimizers(cfg: Config, netG, netD, lr_scale: float = 1.0):
    g, d = cfg.optimizer.g, cfg.optimizer.d
    fused = cfg.optimizer.multi_tensor
    optG = paddle.optimizer.Adam(
        g.lr * lr_scale, g.beta1, g.beta2, parameters=netG.parameters(), use_multi_tensor=fused
    )
    optD = paddle.optimizer.Adam(
        d.lr * lr_scale, d.beta1, d.beta2, parameters=netD.parameters(), use_multi_tensor=fused
    )
    return optG, optD


def lr_multiplier(cfg: Config) -> int:
    """distributed.scale_lr: learning rates times the number of processes (linear scaling rule)."""
    return distributed.world_size() if cfg.distributed.scale_lr else 1


def build_trainer(cfg: Config, dataset) -> GANTrainer:
    from paddlegan_lite.models import build_models
    from paddlegan_lite.ops import accelerate

    paddle.seed(cfg.seed)  # weight init is part of what `seed` makes repeatable
    netG, netD = build_models(cfg.model)
    if cfg.distributed.sync_bn:  # before the optimizers: SyncBatchNorm may bring its own parameters
        netG, netD = distributed.sync_batchnorm(netG), distributed.sync_batchnorm(netD)
    # the CPU fast paths (paddlegan_lite/ops): same layer objects and parameters, faster kernels;
    # before GANTrainer, whose EMA copy of G is then fast too
    netG, netD = accelerate(netG), accelerate(netD)
    optG, optD = build_optimizers(cfg, netG, netD, lr_multiplier(cfg))
    return GANTrainer(cfg, netG, netD, optG, optD, dataset, cfg.train.output_dir)


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`--resume PATH`: a checkpoint folder, or a run folder (its newest complete checkpoint, as
    export and eval take it); `auto`: this run's newest, or None (say so)."""
    if not resume:
        return None
    if resume == "auto":
        found = ckpt.find_latest(run_dir / "checkpoints")
        if found is None:
            log.info(f"--resume auto: no checkpoint in {run_dir / 'checkpoints'}, starting fresh")
        return found
    return ckpt.resolve_checkpoint(resume)


def train(cfg: Config, resume: str | None = None) -> dict:
    """Everything `tools/train.py` does, in order: the machine, the run folder, the data, the
    nets, then `fit()`."""
    from paddlegan_lite.datasets import build_dataset
    from paddlegan_lite.runtime import select_device, use_cpu_threads, use_deterministic_kernels

    # the machine: device, CPU threads, the checks that need them, the process group
    device = select_device(distributed.local_device(cfg.train.device))
    threads, threads_from = use_cpu_threads(cfg.train.threads)
    if cfg.train.deterministic:
        use_deterministic_kernels()
    check_run(cfg, device, distributed.world_size())
    distributed.init(device)  # several processes (paddle.distributed.launch): join the group
    if not distributed.is_main():
        log.setLevel(logging.WARNING)  # rank 0 speaks for the run

    # the run folder: this run's alone, and none of its checkpoints overwritten
    run_dir = Path(cfg.train.output_dir)
    resume_path = resolve_resume(resume, run_dir)  # every rank loads the same checkpoint
    with run_folder.claimed(run_dir):
        resume_step = ckpt.read_step(resume_path) if resume_path else None
        run_folder.check_no_overwrite(run_dir / "checkpoints", resume_step)

        # the data and the nets. Every rank reads the data itself (a download is atomic per
        # process): a rank-0-first barrier would outlast gloo's 30 s limit on a large decode
        dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.channels, train=True)
        check_classes(cfg, dataset)
        trainer = build_trainer(cfg, dataset)

        if distributed.is_main():
            run_folder.write_config(run_dir, dump_config(cfg))
        log.info(f"config:\n{dump_config(cfg)}")
        log.info(
            f"device: {device}; CPU threads: {threads} ({threads_from}); data: {dataset.source}; "
            f"run folder: {run_dir}"
        )
        if distributed.world_size() > 1:
            log_data_parallel(cfg)
        return trainer.fit(resume_from=resume_path)


def check_classes(cfg: Config, dataset) -> None:
    if cfg.model.num_classes and dataset.num_classes != cfg.model.num_classes:
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but the dataset has "
            f"{dataset.num_classes} classes"
        )


def dry_run(cfg: Config) -> str:
    """What `tools/train.py --dry-run` prints: the resolved config and the verdict of every check
    (the file's and the machine's: device, processes, memory), without reading data or training."""
    from paddlegan_lite.config import estimate_memory, machine_memory
    from paddlegan_lite.runtime import cpu_threads, select_device

    device = select_device(distributed.local_device(cfg.train.device))
    check_run(cfg, device, distributed.world_size())
    threads, threads_from = cpu_threads(cfg.train.threads)
    need, have = estimate_memory(cfg).total_bytes, machine_memory()
    memory = f"about {need / 2**30:.2f} GiB" + (f" of {have / 2**30:.1f} GiB" if have else "")
    return (
        f"{dump_config(cfg)}\n"
        f"checks passed: device {device}, {distributed.world_size()} process(es), CPU threads "
        f"{threads} ({threads_from}), memory {memory}; run folder {cfg.train.output_dir}"
    )


def log_data_parallel(cfg: Config) -> None:
    """What changes with several processes: the global batch and (distributed.scale_lr) the lr."""
    world, batch = distributed.world_size(), cfg.train.batch_size
    scale = lr_multiplier(cfg)
    lr = (
        f"learning rates x{scale} (distributed.scale_lr): G {cfg.optimizer.g.lr * scale:g}, "
        f"D {cfg.optimizer.d.lr * scale:g}"
        if cfg.distributed.scale_lr
        else "learning rates as configured (distributed.scale_lr=false)"
    )
    log.info(
        f"data parallel: {world} processes ({distributed.backend()}); batch {batch} per device, "
        f"global batch {batch * world}; {lr}; BatchNorm statistics "
        f"{'synced over the global batch' if cfg.distributed.sync_bn else 'per device'}"
    )

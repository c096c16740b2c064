"""PyTorch twins of paddlegan_lite's nets and training step, for bench/train_speed.py only.

Same layers, widths, losses, batch and step order (D step, then a G step reusing D's fake batch)
as the config they mirror; never imported by the package. Needs `torch` (bench-only).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------- models
class MLPGenerator(nn.Module):
    """z [N, nz] -> images [N, C, S, S]: paddlegan_lite.models.mlp_gan.MLPGenerator."""

    def __init__(self, nz, hidden, channels, image_size):
        super().__init__()
        self.nz, self.num_classes = nz, 0
        self.image_shape = (channels, image_size, image_size)
        self.main = nn.Sequential(
            nn.Linear(nz, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(self.image_shape)),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z).reshape(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """images [N, C, S, S] -> logits [N]."""

    def __init__(self, hidden, channels, image_size):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(channels * image_size * image_size, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.main(x.flatten(1)).flatten()


class DCGANGenerator(nn.Module):
    """z [N, nz] -> images [N, C, S, S]: paddlegan_lite.models.dcgan.DCGANGenerator."""

    def __init__(self, nz, ngf, channels, image_size):
        super().__init__()
        self.nz, self.num_classes = nz, 0
        n = int(round(math.log2(image_size))) - 2
        width = ngf * 2 ** (n - 1)
        layers = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU())
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z.reshape(-1, self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images [N, C, S, S] -> logits [N]."""

    def __init__(self, ndf, channels, image_size):
        super().__init__()
        n = int(round(math.log2(image_size))) - 2
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        width = ndf
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).flatten()


class ACGANGenerator(nn.Module):
    """(z [N, nz], labels [N]) -> images: paddlegan_lite.models.acgan.ACGANGenerator."""

    def __init__(self, nz, ngf, channels, image_size, num_classes):
        super().__init__()
        self.nz, self.num_classes = nz, num_classes
        self.base, self.width = image_size // 4, 2 * ngf
        self.embed = nn.Embedding(num_classes, nz)
        self.fc = nn.Linear(nz, self.width * self.base * self.base)
        # Paddle's BatchNorm momentum 0.8 (keep 80% of the old statistic) is torch's 0.2
        self.main = nn.Sequential(
            nn.BatchNorm2d(2 * ngf, momentum=0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(2 * ngf, momentum=0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(ngf, momentum=0.2),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z, labels):
        h = F.relu(self.fc(z * self.embed(labels.reshape(-1))))
        return self.main(h.reshape(-1, self.width, self.base, self.base))


class ACGANDiscriminator(nn.Module):
    """images -> (real/fake logits [N], class logits [N, num_classes])."""

    def __init__(self, ndf, channels, image_size, num_classes, dropout=0.25):
        super().__init__()
        side = math.ceil(math.ceil(image_size / 2) / 2) + 1
        side = math.ceil(side / 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, ndf, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Conv2d(ndf, 2 * ndf, 3, stride=2, padding=1),
            nn.ZeroPad2d((0, 1, 0, 1)),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.BatchNorm2d(2 * ndf, momentum=0.2),
            nn.Conv2d(2 * ndf, 4 * ndf, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.BatchNorm2d(4 * ndf, momentum=0.2),
            nn.Conv2d(4 * ndf, 8 * ndf, 3, stride=1, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Flatten(),
        )
        self.adv_head = nn.Linear(8 * ndf * side * side, 1)
        self.cls_head = nn.Linear(8 * ndf * side * side, num_classes)

    def forward(self, x):
        features = self.features(x)
        return self.adv_head(features).flatten(), self.cls_head(features)


def init_weights(net: nn.Module, std: float) -> None:
    """DCGAN init as paddlegan_lite's: weights N(0, std), BatchNorm scale N(1, std), biases 0."""
    if std <= 0:
        return
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, std)
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def build_models(m: dict):
    """(netG, netD) from a paddlegan_lite `model` config section (a dict)."""
    if m["name"] == "mlp_gan":
        pair = (
            MLPGenerator(m["nz"], m["hidden"], m["channels"], m["image_size"]),
            MLPDiscriminator(m["hidden"], m["channels"], m["image_size"]),
        )
    elif m["name"] == "dcgan":
        pair = (
            DCGANGenerator(m["nz"], m["ngf"], m["channels"], m["image_size"]),
            DCGANDiscriminator(m["ndf"], m["channels"], m["image_size"]),
        )
    else:
        args = (m["channels"], m["image_size"], m["num_classes"])
        pair = ACGANGenerator(m["nz"], m["ngf"], *args), ACGANDiscriminator(m["ndf"], *args)
    for net in pair:
        init_weights(net, m["init_std"])
    return pair


# ---------------------------------------------------------------------------------- losses
def d_loss(kind, real, fake, real_label):
    if kind == "vanilla":
        bce = F.binary_cross_entropy_with_logits
        return bce(real, torch.full_like(real, real_label)) + bce(fake, torch.zeros_like(fake))
    if kind == "lsgan":
        return ((real - real_label) ** 2).mean() + (fake**2).mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def g_loss(kind, fake):
    if kind == "vanilla":
        return F.softplus(-fake).mean()
    if kind == "lsgan":
        return ((fake - 1.0) ** 2).mean()
    return -fake.mean()


def d_output_mean(kind, logits):
    return torch.sigmoid(logits).mean() if kind == "vanilla" else logits.mean()


# ---------------------------------------------------------------------------------- data
class ArrayDataset(torch.utils.data.Dataset):
    """uint8 [N, 1 or C, S, S] in memory; items scaled to [-1, 1] on access, as paddlegan_lite's."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, channels: int):
        self.images, self.labels, self.channels = images, labels.astype(np.int64), channels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if image.shape[0] != self.channels:
            image = np.repeat(image, self.channels, axis=0)
        return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0), self.labels[index]


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int):
    """Shuffled index batches, last partial batch dropped: the paddlegan_lite sampler's order."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    return [
        order[b * batch_size : (b + 1) * batch_size].tolist()
        for b in range(num_items // batch_size)
    ]


# ---------------------------------------------------------------------------------- training
class TorchTrainer:
    """The paddlegan_lite step in PyTorch: D step, G step on D's fake batch, stats kept on the
    device and read back once per log interval."""

    def __init__(self, cfg: dict, dataset: ArrayDataset, run_dir: Path):
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        t, o = cfg["train"], cfg["optimizer"]
        self.kind, self.real_label, self.conditional = t["loss"], t["real_label"], False
        torch.manual_seed(cfg["seed"])
        self.netG, self.netD = build_models(cfg["model"])
        self.conditional = cfg["model"]["num_classes"] > 0
        betas = lambda a: (a["beta1"], a["beta2"])  # noqa: E731
        self.optG = torch.optim.Adam(self.netG.parameters(), o["g"]["lr"], betas=betas(o["g"]))
        self.optD = torch.optim.Adam(self.netD.parameters(), o["d"]["lr"], betas=betas(o["d"]))

    def sample_latent(self, batch_size: int):
        z = torch.randn(batch_size, self.netG.nz)
        if not self.conditional:
            return z, None
        return z, torch.randint(0, self.netG.num_classes, (batch_size,))

    def generate(self, z, labels):
        return self.netG(z, labels) if self.conditional else self.netG(z)

    def d_objective(self, real_out, fake_out, labels, gen_labels):
        if not self.conditional:
            return d_loss(self.kind, real_out, fake_out, self.real_label), real_out, fake_out
        (real_logits, real_cls), (fake_logits, fake_cls) = real_out, fake_out
        adversarial = d_loss(self.kind, real_logits, fake_logits, self.real_label)
        classes = F.cross_entropy(real_cls, labels) + F.cross_entropy(fake_cls, gen_labels)
        return adversarial + self.cfg["train"]["cls_weight"] * classes, real_logits, fake_logits

    def g_objective(self, fake_out, gen_labels):
        if not self.conditional:
            return g_loss(self.kind, fake_out)
        fake_logits, fake_cls = fake_out
        classes = F.cross_entropy(fake_cls, gen_labels)
        return g_loss(self.kind, fake_logits) + self.cfg["train"]["cls_weight"] * classes

    def d_step(self, real, labels):
        z, gen_labels = self.sample_latent(real.shape[0])
        fake = self.generate(z, gen_labels)
        loss, real_logits, fake_logits = self.d_objective(
            self.netD(real), self.netD(fake.detach()), labels, gen_labels
        )
        self.optD.zero_grad()
        loss.backward()
        self.optD.step()
        d_real = d_output_mean(self.kind, real_logits.detach())
        d_fake = d_output_mean(self.kind, fake_logits.detach())
        return loss.detach(), d_real, d_fake, fake, gen_labels

    def g_step(self, fake, gen_labels):
        self.netD.requires_grad_(False)  # D's input gradient only, as paddlegan_lite's frozen()
        try:
            loss = self.g_objective(self.netD(fake), gen_labels)
            self.optG.zero_grad()
            loss.backward()
            self.optG.step()
        finally:
            self.netD.requires_grad_(True)
        return loss.detach()

    def fit(self, total_steps: int, log_interval: int, stop=None) -> list[dict]:
        """Train total_steps (or until `stop(step)` is true, asked after every step); one row
        per log interval: images, wall and CPU seconds."""
        t = self.cfg["train"]
        rows, stats, step, epoch = [], [], 0, 0
        jsonl = open(self.run_dir / "metrics.jsonl", "w", encoding="utf-8")
        start, cpu = time.perf_counter(), time.process_time()
        while step < total_steps:
            batches = epoch_batches(len(self.dataset), t["batch_size"], self.cfg["seed"], epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches)
            for real, labels in loader:
                torch.manual_seed(self.cfg["seed"] * 1_000_003 + step)
                loss_d, d_real, d_fake, fake, gen_labels = self.d_step(real, labels)
                loss_g = torch.zeros_like(loss_d)
                if (step + 1) % t["d_steps"] == 0:
                    loss_g = self.g_step(fake, gen_labels)
                stats.append(torch.stack([loss_d, loss_g, d_real, d_fake]))
                step += 1
                if step % log_interval == 0:
                    values = torch.stack(stats).double().mean(0).tolist()  # the one sync
                    jsonl.write(json.dumps({"step": step, "values": values}) + "\n")
                    jsonl.flush()
                    now, cpu_now = time.perf_counter(), time.process_time()
                    images = len(stats) * t["batch_size"]
                    rows.append({"images": images, "seconds": now - start, "cpu": cpu_now - cpu})
                    stats, start, cpu = [], now, cpu_now
                if step >= total_steps or (stop is not None and stop(step)):
                    total_steps = step
                    break
            epoch += 1
        jsonl.close()
        self.steps_done = step
        return rows

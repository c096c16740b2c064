"""Generate images from an exported model folder with Paddle Inference, no training code needed.

Deployment needs paddle, numpy, pillow and pyyaml only: this module imports nothing else from the
package but `errors` and `images` (numpy and Pillow). `Generator(model_dir).generate(seeds)`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from paddlegan_lite.errors import UserError
from paddlegan_lite.images import make_grid, save_png

INFER_CFG = "infer_cfg.yml"
INFER_CFG_FORMAT = 1
LATENT_RULE = "z = numpy.random.default_rng(seed).standard_normal(nz).astype(float32)"
GIF_FRAME_MS = 100
# One call makes at most this many images (files, grid tiles or walk frames): a typo such as
# --seeds 0-10000000 is refused in a second instead of writing files for hours.
MAX_IMAGES = 10_000
# A grid is built in memory: its tiles plus the canvas, together about twice the tiles. Beyond
# this it is refused with the size it would need, rather than swapping or dying mid-run.
GRID_MAX_BYTES = 512 * 2**20
_INT_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class InferenceError(UserError):
    """A model folder, option or input the predictor cannot use as given."""


# ---------------------------------------------------------------------- inputs
def parse_int_ranges(text: str, what: str) -> list[range]:
    """'0-63', '1,5,9' or '0-3,10' -> [range(0, 64)] etc. (inclusive ranges, order kept).

    Ranges stay lazy, so a huge range is counted (and refused) without being built."""
    ranges = []
    for part in str(text).split(","):
        match = _INT_RANGE.match(part.strip())
        if not match:
            raise InferenceError(
                f"{what} {text!r} does not parse: use a range like 0-63, a list like 1,5,9 "
                "or both (0-3,10); values are integers >= 0"
            )
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high < low:
            raise InferenceError(f"{what} {text!r}: the range {part.strip()} runs backwards")
        ranges.append(range(low, high + 1))
    return ranges


def count_unique(ranges: list[range]) -> int:
    """How many distinct values the ranges hold (overlaps counted once), without listing them."""
    total, end = 0, -1
    for r in sorted(ranges, key=lambda r: r.start):
        if r.stop > end:
            total += r.stop - max(r.start, end)
            end = r.stop
    return total


def parse_int_list(text: str, what: str, limit: int | None = None) -> list[int]:
    """'0-63', '1,5,9' or '0-3,10' -> [0, 1, ..., 63] etc.: each value once, first order kept.

    More than `limit` distinct values is an InferenceError naming the count and the limit."""
    ranges = parse_int_ranges(text, what)
    count = count_unique(ranges)
    if limit is not None and count > limit:
        raise InferenceError(
            f"{what} {text} names {count:,} values; one call takes at most {limit:,} "
            "(split them over several calls)"
        )
    return list(dict.fromkeys(v for r in ranges for v in r))


def check_image_count(count: int, what: str) -> None:
    """Refuse more than MAX_IMAGES images in one call."""
    if count > MAX_IMAGES:
        raise InferenceError(
            f"{what} makes {count:,} images; one call makes at most {MAX_IMAGES:,} "
            "(MAX_IMAGES): split the seeds over several calls"
        )


def grid_bytes(count: int, image_shape, nrow: int | None = None, pad: int = 2) -> int:
    """Memory a grid of `count` images (C, H, W) takes while it is built: tiles plus canvas."""
    channels, height, width = image_shape
    nrow = nrow or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / nrow)
    canvas = (rows * (height + pad) + pad) * (nrow * (width + pad) + pad) * channels
    return count * channels * height * width + canvas


def check_grid_size(
    count: int, image_shape, nrow: int | None = None, what: str = "--grid", advice: str = ""
) -> None:
    """Refuse a grid (or GIF) beyond GRID_MAX_BYTES, naming what it would need and how many fit."""
    need = grid_bytes(count, image_shape, nrow)
    if need <= GRID_MAX_BYTES:
        return
    low, high = 1, count  # the largest count that fits, for the message (same rows if nrow)
    while low < high:
        mid = (low + high + 1) // 2
        if grid_bytes(mid, image_shape, nrow) <= GRID_MAX_BYTES:
            low = mid
        else:
            high = mid - 1
    shape = "x".join(str(v) for v in image_shape)
    advice = advice or "draw fewer seeds for the grid, or write only files with --output_dir"
    raise InferenceError(
        f"{what} of {count:,} images of {shape} needs {need / 2**20:,.0f} MiB in memory; "
        f"the limit is {GRID_MAX_BYTES / 2**20:,.0f} MiB (GRID_MAX_BYTES), about {low:,} such "
        f"images: {advice}"
    )


def seed_latents(seeds, nz: int) -> np.ndarray:
    """Seeds -> z float32 [N, nz]. Each row depends on its seed only, never on the batch."""
    rows = [np.random.default_rng(int(s)).standard_normal(nz).astype(np.float32) for s in seeds]
    return np.stack(rows) if rows else np.zeros((0, nz), dtype=np.float32)


def walk_latents(seed_a: int, seed_b: int, steps: int, nz: int) -> np.ndarray:
    """[steps, nz] latents along the arc from seed_a's z to seed_b's, ends included."""
    a, b = seed_latents([seed_a, seed_b], nz)
    return np.stack([slerp(a, b, t) for t in np.linspace(0.0, 1.0, steps)])


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from a (t=0, exactly) to b (t=1, exactly).

    A straight line between two Gaussian latents passes close to the origin, where z has a much
    smaller norm than anything the generator saw in training; the arc keeps the norm typical.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:  # (anti)parallel: the arc is undefined, the line is as good
        return ((1.0 - t) * a64 + t * b64).astype(np.float32)
    mixed = (np.sin((1.0 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return mixed.astype(np.float32)


def images_to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] float images [N, C, H, W] -> uint8 [N, H, W, C] (round to nearest)."""
    scaled = np.clip(np.asarray(images, dtype=np.float32) * 255.0 + 0.5, 0, 255)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------- the model folder
def read_infer_cfg(model_dir: str | Path) -> dict:
    """Read and check `<model_dir>/infer_cfg.yml`; every problem is one InferenceError line."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        state = "is a file, not a folder" if model_dir.exists() else "does not exist"
        raise InferenceError(
            f"model folder {model_dir} {state} (export one with tools/export_model.py)"
        )
    path = model_dir / INFER_CFG
    if not path.is_file():
        raise InferenceError(
            f"{model_dir} has no {INFER_CFG}: it is not an exported model "
            "folder (tools/export_model.py writes one)"
        )
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InferenceError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != INFER_CFG_FORMAT:
        raise InferenceError(
            f"{path} is not a paddlegan_lite infer config (format {INFER_CFG_FORMAT})"
        )
    _check_infer_cfg(cfg, path)
    for key in ("model_file", "params_file"):
        if not (model_dir / cfg[key]).is_file():
            raise InferenceError(f"{path} names {key} {cfg[key]!r}, which is not in {model_dir}")
    return cfg


def _check_infer_cfg(cfg: dict, path: Path) -> None:
    def bad(key, want):
        return InferenceError(f"{path}: '{key}' must be {want}, got {cfg.get(key)!r}")

    for key in ("model", "model_file", "params_file"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise bad(key, "a non-empty string")
    if not _is_int(cfg.get("nz")) or cfg["nz"] <= 0:
        raise bad("nz", "an integer > 0")
    if not _is_int(cfg.get("num_classes")) or cfg["num_classes"] < 0:
        raise bad("num_classes", "an integer >= 0")
    shape = cfg.get("image_shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)
    ):
        raise bad("image_shape", "[channels, height, width]")
    if shape[0] not in (1, 3):
        raise bad("image_shape", "1 or 3 channels")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def input_names(num_classes: int) -> list[str]:
    """The exported graph's inputs: z, and labels for conditional models."""
    return ["z", "labels"] if num_classes else ["z"]


def create_predictor(
    model_dir: Path, cfg: dict, device: str = "cpu", cpu_threads: int = 0, mkldnn: bool = True
):
    """A Paddle Inference predictor for the folder's model on 'cpu', 'gpu' or 'gpu:N'."""
    if device != "cpu" and device != "gpu" and not re.match(r"^gpu:\d+$", device):
        raise InferenceError(f"--device must be cpu, gpu or gpu:N, got {device!r}")
    from paddle import inference

    config = inference.Config(
        str(model_dir / cfg["model_file"]), str(model_dir / cfg["params_file"])
    )
    config.disable_glog_info()
    if device.startswith("gpu"):
        config.enable_use_gpu(256, _gpu_id(device))  # 256 MB initial pool; it grows on demand
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(cpu_threads or 1)
        if mkldnn:
            config.enable_mkldnn()
            # Paddle 3.3.1's oneDNN placement pass moves nearest_interp (AC-GAN's upsampling)
            # onto oneDNN, which then fails on its float64 `scale` attribute (Paddle issue
            # #79749). Without the pass, the conv fusion passes still put convolutions on
            # oneDNN (faster than `disable_mkldnn()`: bench/infer_speed.py), and an image's
            # bits do not depend on its batch.
            config.delete_pass("onednn_placement_pass")
        else:
            config.disable_mkldnn()
    try:
        return inference.create_predictor(config)
    except Exception as exc:  # Paddle raises several types for unreadable models
        raise InferenceError(
            f"cannot load the model in {model_dir}: {error_summary(exc)}"
        ) from None


def _gpu_id(device: str) -> int:
    import paddle

    count = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    index = int(device[4:]) if ":" in device else 0
    if index >= count:
        raise InferenceError(
            f"--device {device} but this Paddle build sees {count} CUDA device(s) "
            "(install paddlepaddle-gpu, or use --device cpu)"
        )
    return index


def error_summary(exc: BaseException) -> str:
    """One line from Paddle's multi-line errors: the `SomeError: message` line, else the last."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if re.match(r"^\w+Error: ", line):
            return line
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------------- the predictor
class Generator:
    """An exported generator: z (or seeds) [and labels] -> images, through Paddle Inference."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int = 64,
        cpu_threads: int = 0,
        mkldnn: bool = True,
    ):
        if batch_size <= 0:
            raise InferenceError(f"batch size must be > 0, got {batch_size}")
        if cpu_threads < 0:
            raise InferenceError(f"CPU threads must be >= 0 (0: one thread), got {cpu_threads}")
        self.model_dir = Path(model_dir).expanduser()
        self.cfg = read_infer_cfg(self.model_dir)
        self.nz = self.cfg["nz"]
        self.num_classes = self.cfg["num_classes"]
        self.image_shape = tuple(self.cfg["image_shape"])  # (C, H, W)
        self.batch_size = batch_size
        self.predictor = create_predictor(self.model_dir, self.cfg, device, cpu_threads, mkldnn)
        self._check_model_fits_cfg()

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def generate(self, seeds=None, labels=None, *, z: np.ndarray | None = None) -> np.ndarray:
        """Seeds (or z [N, nz]) and, for conditional models, labels -> uint8 [N, H, W, C].

        `labels` is one int for every image or one per image.
        """
        if (seeds is None) == (z is None):
            raise InferenceError("give either seeds or z")
        if z is None:
            z = seed_latents(seeds, self.nz)
        return images_to_uint8(self.run(z, labels))

    def run(self, z: np.ndarray, labels=None) -> np.ndarray:
        """z float32 [N, nz] (+ labels [N]) -> float32 images [N, C, H, W] in [0, 1]."""
        z, labels = self._check_inputs(z, labels)
        outputs = []
        for start in range(0, len(z), self.batch_size):
            stop = start + self.batch_size
            outputs.append(
                self._run_batch(z[start:stop], None if labels is None else labels[start:stop])
            )
        if not outputs:
            return np.zeros((0, *self.image_shape), dtype=np.float32)
        return np.concatenate(outputs)

    def _run_batch(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
        for name, array in feeds.items():
            handle = self.predictor.get_input_handle(name)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(np.ascontiguousarray(array))
        self.predictor.run()
        output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        return output.copy_to_cpu()

    def _check_inputs(self, z, labels):
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.nz:
            raise InferenceError(f"z must have shape [N, {self.nz}], got {list(z.shape)}")
        if not self.conditional:
            if labels is not None:
                raise InferenceError(
                    f"labels given, but the model in {self.model_dir} "
                    f"({self.cfg['model']}) is unconditional and takes none"
                )
            return z, None
        if labels is None:
            raise InferenceError(
                f"the model in {self.model_dir} ({self.cfg['model']}) is "
                f"conditional: give labels in 0-{self.num_classes - 1}"
            )
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size not in (1, len(z)):
            raise InferenceError(f"give one label or one per image: {labels.size} for {len(z)}")
        labels = np.broadcast_to(labels, (len(z),))
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise InferenceError(
                f"label {int(bad[0])} is out of range: the model in {self.model_dir} has "
                f"{self.num_classes} classes (0-{self.num_classes - 1})"
            )
        return z, np.ascontiguousarray(labels)

    def _check_model_fits_cfg(self) -> None:
        """One tiny run: an infer_cfg.yml that does not describe this model fails here, clearly."""
        names = list(self.predictor.get_input_names())
        where = f"{self.model_dir / INFER_CFG} does not match the model beside it"
        if names != input_names(self.num_classes):
            raise InferenceError(
                f"{where}: the model takes inputs {names}, the file says "
                f"{input_names(self.num_classes)}"
            )
        labels = np.zeros([1], dtype=np.int64) if self.conditional else None
        try:
            shape = self._run_batch(np.zeros([1, self.nz], dtype=np.float32), labels).shape
        except Exception as exc:  # Paddle's shape errors come as several exception types
            raise InferenceError(f"{where} (nz={self.nz}?): {error_summary(exc)}") from None
        if tuple(shape[1:]) != self.image_shape:
            raise InferenceError(
                f"{where}: it makes images {list(shape[1:])}, the file says "
                f"{list(self.image_shape)}"
            )


# ---------------------------------------------------------------------- files
def pair_seeds_labels(seeds: list[int], labels: list[int] | None):
    """Every seed with every label, label-major: (seeds, labels or None, images per grid row).

    Unconditional: the seeds as given, near-square grid. Conditional: row k of the grid is
    label k with every seed, so column j shows seed j across the classes.
    """
    if labels is None:
        return list(seeds), None, None
    pairs = [(s, k) for k in labels for s in seeds]
    return [s for s, _ in pairs], [k for _, k in pairs], len(seeds)


def image_name(seed: int, label: int | None) -> str:
    return f"seed{seed:04d}.png" if label is None else f"seed{seed:04d}_label{label}.png"


def save_seed_images(
    generator: Generator,
    seeds: list[int],
    labels: list[int] | None = None,
    output_dir: str | Path | None = None,
    grid_path: str | Path | None = None,
    progress=None,
) -> list[Path]:
    """One PNG per (seed, label) in output_dir and/or one grid PNG; returns the paths written.

    Files are written as each batch finishes; `progress(done, total)` is called after each.
    At most MAX_IMAGES images, and a grid within GRID_MAX_BYTES (checked before any work)."""
    what = f"{len(seeds):,} seed(s)"
    if labels is not None:
        what += f" x {len(labels):,} label(s)"
    seeds, labels, nrow = pair_seeds_labels(seeds, labels)
    total = len(seeds)
    check_image_count(total, what)
    if grid_path:
        check_grid_size(total, generator.image_shape, nrow)
        channels, height, width = generator.image_shape
        tiles = np.empty((total, height, width, channels), dtype=np.uint8)
    written = []
    step = generator.batch_size
    for start in range(0, total, step):
        chunk_seeds = seeds[start : start + step]
        chunk_labels = None if labels is None else labels[start : start + step]
        images = generator.generate(chunk_seeds, chunk_labels)
        if grid_path:
            tiles[start : start + len(images)] = images
        if output_dir:
            for i, image in enumerate(images):
                label = None if chunk_labels is None else chunk_labels[i]
                path = Path(output_dir) / image_name(chunk_seeds[i], label)
                written.append(_write(save_png, path, image))
        if progress is not None:
            progress(start + len(images), total)
    if grid_path:
        written.append(_write(save_png, grid_path, make_grid(tiles, nrow=nrow)))
    return written


def save_latent_walk(
    generator: Generator,
    seed_a: int,
    seed_b: int,
    steps: int,
    label: int | None = None,
    output_dir: str | Path | None = None,
    gif_path: str | Path | None = None,
) -> list[Path]:
    """`steps` frames on the arc from seed_a's latent to seed_b's, as PNG frames and/or a GIF."""
    if steps < 2:
        raise InferenceError(f"--steps must be >= 2 (both ends are frames), got {steps}")
    if steps > MAX_IMAGES:
        raise InferenceError(
            f"--steps {steps:,}: a walk has at most {MAX_IMAGES:,} frames (MAX_IMAGES)"
        )
    if gif_path:
        # a GIF holds its frames in memory, as a grid its tiles
        check_grid_size(steps, generator.image_shape, what="--gif", advice="use fewer --steps")
    z = walk_latents(seed_a, seed_b, steps, generator.nz)
    written, frames = [], []
    for start in range(0, steps, generator.batch_size):
        batch = generator.generate(z=z[start : start + generator.batch_size], labels=label)
        if gif_path:
            frames.append(batch)
        if output_dir:
            for i, frame in enumerate(batch, start):
                name = f"walk_seed{seed_a:04d}-seed{seed_b:04d}_{i:03d}.png"
                written.append(_write(save_png, Path(output_dir) / name, frame))
    if gif_path:
        written.append(_write(save_gif, gif_path, np.concatenate(frames)))
    return written


def save_gif(path: str | Path, frames: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> Path:
    """uint8 frames [N, H, W, C] -> a looping GIF (gray stays lossless; colour is quantised).

    Pillow merges identical consecutive frames into one longer frame: the timing is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f[:, :, 0] if f.shape[2] == 1 else f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def _write(save, path, image) -> Path:
    """save(path, image), with a failed write (disk full, no permission, a file where a folder
    should be, a suffix Pillow has no format for) as one InferenceError line."""
    try:
        return save(path, image)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InferenceError(f"cannot write {path} ({reason})") from None

"""Fixtures of the end-to-end tests only."""

import pytest
from data_files import write_mnist_idx
from helpers import REPO_ROOT

# Tiny widths, 3 steps: real layers and a real export in about a second each. init_std=0 (Paddle's
# default init) gives images that differ visibly after a few steps, so seeds, walk frames and grid
# cells are distinct; the DCGAN N(0, 0.02) init starts out an almost flat gray.
EXPORTED = {
    "mlp_gan_mnist": ["model.hidden=32"],  # unconditional
    "dcgan_mnist": ["model.ngf=8", "model.ndf=4", "model.init_std=0"],
    "acgan_mnist": ["model.ngf=8", "model.ndf=4", "model.init_std=0"],  # conditional, 10 classes
}


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> dict:
    """name -> exported model folder: each config of EXPORTED trained 3 steps on tiny MNIST files,
    then exported. Its run folder (VisualDL records, checkpoints) is the folder's sibling `name`.
    Tests copy a folder before changing it."""
    from paddlegan_lite.config import load_config
    from paddlegan_lite.export import export_model
    from paddlegan_lite.trainer import train

    root = tmp_path_factory.mktemp("exported")
    write_mnist_idx(root / "mnist", n=32, seed=1)
    folders = {}
    for name, sizes in EXPORTED.items():
        overrides = sizes + [
            f"data.root={root / 'mnist'}",
            "data.download=false",
            f"train.output_dir={root / name}",
            "train.max_steps=3",
            "train.batch_size=8",
            "train.num_samples=10",
        ]
        train(load_config(REPO_ROOT / "configs" / f"{name}.yaml", overrides))
        folders[name] = root / f"{name}_inference"
        export_model(root / name / "checkpoints" / "latest", folders[name])
    return folders

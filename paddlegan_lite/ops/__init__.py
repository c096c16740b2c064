"""Speed machinery beside the models, switched on explicitly (as stylegan2-ada's torch_utils/ops).

The models are plain Paddle layers. `accelerate(net)` swaps their layers for faster CPU twins
(ops/layers.py, on oneDNN through ops/onednn.py); the run set-up calls it in one visible place
(trainer.build_trainer; the classifier extractor). `process.configure_process_env()` prepares the
process before Paddle loads; the tools call it first. This file imports no Paddle, so that a tool
can import `paddlegan_lite.ops.process` before Paddle loads.
"""

from __future__ import annotations


def accelerate(net):
    """Swap, in place, every nn.Conv2D, nn.Conv2DTranspose, nn.LeakyReLU and models' UpsampleConv2D
    of `net` (itself included) for its faster twin (ops/layers.FAST_TWINS); returns `net`.

    Like Paddle's SyncBatchNorm.convert_sync_batchnorm, but each twin is a subclass that overrides
    only `forward`, so the layer object itself changes class: its parameters, buffers and hooks
    (spectral norm's) are the very same objects, optimizers built before or after see the same
    parameters, and state_dict keys do not change. Exact types only: a subclass with a forward of
    its own is left alone. Calling it twice changes nothing more. The twins compute the same
    function; they are faster on CPU in the dynamic graph and run the plain ops elsewhere.
    """
    from paddlegan_lite.ops.layers import FAST_TWINS

    for layer in net.sublayers(include_self=True):
        twin = FAST_TWINS.get(type(layer))
        if twin is not None:
            layer.__class__ = twin
    return net


__all__ = ["accelerate"]

"""Layers the models need beyond Paddle's own: an upsample-then-conv unit, and a dropout and a
spectral norm whose gradients can be differentiated again. All are plain Paddle math; the faster
CPU twins of Paddle's layers and of the upsampling conv live in paddlegan_lite/ops and are
swapped in by `ops.accelerate(net)`.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.nn.utils.spectral_norm_hook import SpectralNorm


class UpsampleConv2D(nn.Conv2D):
    """2x nearest upsampling followed by this 3x3, padding-1 nn.Conv2D: [N, Ci, H, W] ->
    [N, Co, 2H, 2W].

    One layer rather than nn.Upsample + nn.Conv2D so that `ops.accelerate` can compute the pair
    as one transposed conv with folded weights (ops/layers.py). Its parameters are nn.Conv2D's
    ([Co, Ci, 3, 3] weight, bias): checkpoints hold the same keys either way.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if list(self._kernel_size) != [3, 3] or self._padding != 1 or list(self._stride) != [1, 1]:
            raise ValueError("UpsampleConv2D is for 3x3 convolutions with padding 1 and stride 1")
        plain = (
            self._padding_mode == "zeros"
            and self._data_format == "NCHW"
            and self._groups == 1
            and list(self._dilation) == [1, 1]
        )
        if not plain:  # the cases the folded transposed conv computes
            raise ValueError("UpsampleConv2D takes zero padding, NCHW, no groups or dilation")

    def forward(self, x):
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class Dropout(nn.Dropout):
    """nn.Dropout whose gradient can be differentiated again (R1 and gradient penalties through
    AC-GAN's D): Paddle 3.3's dropout_grad has no grad op. In training the stock op draws the
    mask (the same random numbers, so the same masks) on ones, and x is multiplied by it."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        with paddle.no_grad():
            ones = paddle.ones_like(x)
            mask = F.dropout(ones, self.p, self.axis, training=True, mode=self.mode)
        return x * mask


class TwiceDifferentiableSpectralNorm(SpectralNorm):
    """Paddle's spectral-norm hook (paddle.nn.utils.spectral_norm) with sigma = sum(u * W v)
    where Paddle computes dot(u, mv(W, v)): the same value, from ops whose gradients can be
    differentiated again. Paddle 3.3's dot_grad has no grad op, so R1 and gradient penalties
    (which differentiate D's input gradient with respect to its weights) failed on every
    spectrally normalised D. The power iteration is Paddle's (the same ops, u and v updated in
    place without gradient).

    All of it runs in float32 with autocast off: the hook fires inside D's forward, which
    train.amp runs under auto_cast, whose O1 list would put the power iteration's matmuls in
    float16 on a GPU (the u and v buffers are float32, and sigma's error would scale every
    weight). Not run on a GPU here: on CPU auto_cast changes nothing."""

    def compute_weight(self, layer, do_power_iteration: bool):
        weight = getattr(layer, self.name + "_orig")
        u, v = getattr(layer, self.name + "_u"), getattr(layer, self.name + "_v")
        with paddle.amp.auto_cast(enable=False):
            weight_mat = self.reshape_weight_to_matrix(weight)
            if do_power_iteration:
                with paddle.no_grad():
                    for _ in range(self.n_power_iterations):
                        wt_u = paddle.matmul(weight_mat, u, transpose_x=True)
                        paddle.assign(F.normalize(wt_u, axis=0, epsilon=self.eps), v)
                        w_v = paddle.matmul(weight_mat, v)
                        paddle.assign(F.normalize(w_v, axis=0, epsilon=self.eps), u)
            # copies: the next training-mode forward updates the buffers in place, and this
            # forward's graph must keep the u and v it used (as Paddle's hook does)
            u, v = u.clone(), v.clone()
            sigma = (u.unsqueeze(1) * weight_mat * v.unsqueeze(0)).sum()  # u^T W v
            return weight / sigma


__all__ = ["Dropout", "TwiceDifferentiableSpectralNorm", "UpsampleConv2D"]

"""Layers the models need beyond Paddle's own: an upsample-then-conv and a conv-then-pool unit,
and a batch norm, a dropout and a spectral norm whose gradients can be differentiated again
(quickly). All are plain Paddle math; the faster CPU twins of Paddle's layers and of the
resampling convs live in paddlegan_lite/ops and are swapped in by `ops.accelerate(net)`.
"""

from __future__ import annotations

import contextlib

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.nn.utils.spectral_norm_hook import SpectralNorm

# kernel size -> the padding that keeps the side: the convolutions the resampling layers below
# take (ops/layers.py folds each with its resampling into one stride-2 conv)
SAME_SIZE_PADDING = {1: 0, 3: 1}


def plain_conv_options(layer) -> bool:
    """Zero padding mode, NCHW, no groups or dilation: the convs the folded resampling layers and
    ops/layers.py's fast paths are written for."""
    return (
        layer._padding_mode == "zeros"
        and layer._data_format == "NCHW"
        and layer._groups == 1
        and list(layer._dilation) == [1, 1]
    )


def _check_same_size_conv(layer: nn.Conv2D, name: str) -> None:
    kernel, padding = list(layer._kernel_size), layer._padding
    size_kept = kernel[0] == kernel[1] and SAME_SIZE_PADDING.get(kernel[0]) == padding
    if not size_kept or list(layer._stride) != [1, 1]:
        raise ValueError(
            f"{name} is for 1x1 (padding 0) and 3x3 (padding 1) convolutions with stride 1"
        )
    if not plain_conv_options(layer):
        raise ValueError(f"{name} takes zero padding, NCHW, no groups or dilation")


class UpsampleConv2D(nn.Conv2D):
    """2x nearest upsampling followed by this 3x3 (padding 1) or 1x1 nn.Conv2D: [N, Ci, H, W] ->
    [N, Co, 2H, 2W].

    One layer rather than nn.Upsample + nn.Conv2D so that `ops.accelerate` can compute the pair
    as one transposed conv with folded weights (ops/layers.py). Its parameters are nn.Conv2D's
    ([Co, Ci, k, k] weight, bias): checkpoints hold the same keys either way.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_same_size_conv(self, "UpsampleConv2D")

    def forward(self, x):
        if self._kernel_size[0] == 1:
            # a 1x1 conv commutes with the upsampling: convolve 4x fewer pixels (exported
            # generators run this plain forward)
            return F.interpolate(super().forward(x), scale_factor=2, mode="nearest")
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class ConvPool2D(nn.Conv2D):
    """This 3x3 (padding 1) or 1x1 nn.Conv2D followed by 2x2 average pooling, stride 2:
    [N, Ci, H, W] -> [N, Co, H/2, W/2] (SNGAN's down-blocks).

    One layer so that `ops.accelerate` can compute the pair as one stride-2 conv with folded
    weights (ops/layers.py); nn.Conv2D's parameters, so checkpoints keep their keys.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_same_size_conv(self, "ConvPool2D")

    def forward(self, x):
        if self._kernel_size[0] == 1:  # pool first, as UpsampleConv2D convolves first
            return super().forward(F.avg_pool2d(x, kernel_size=2, stride=2))
        return F.avg_pool2d(super().forward(x), kernel_size=2, stride=2)


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


class BatchNorm2D(nn.BatchNorm2D):
    """nn.BatchNorm2D for the discriminators, whose training-mode forward can also be made of
    mean, variance and elementwise ops: R1 and gradient penalties differentiate D's input
    gradient again, and Paddle 3.3's CPU batch_norm_double_grad made a penalised DCGAN D step
    about 100x slower than an unpenalised one (91% of its time in that one kernel). The
    penalties run their own forward of D inside `double_backward_mode(D)`; every other forward
    runs the stock op, which is faster for first-order gradients (Paddle's CPU gradients of
    broadcasting elementwise ops are slow).

    Same parameters, buffers and checkpoint keys as nn.BatchNorm2D. The elementwise path
    normalises with the batch's mean and biased variance as Paddle's kernel does, and leaves
    the running statistics alone: the penalties' forward looks again at images D's loss has
    just seen (whose forward updated them), and an in-place update there would also invalidate
    that forward's saved tensors. It runs in float32 with autocast off (Paddle's kernel keeps
    its statistics in float32 when train.amp feeds it float16); the output has the input's
    dtype."""

    elementwise = False  # set by double_backward_mode

    def forward(self, x):
        if not (self.elementwise and self.training) or self._use_global_stats:
            return super().forward(x)
        with paddle.amp.auto_cast(enable=False):
            x32 = x.astype("float32")
            # sum / count: Paddle's CPU mean_grad is several times slower than sum_grad
            count = x.shape[0] * x.shape[2] * x.shape[3]
            mean = x32.sum(axis=[0, 2, 3], keepdim=True) / count
            centred = x32 - mean
            var = (centred * centred).sum(axis=[0, 2, 3], keepdim=True) / count
            y = centred * paddle.rsqrt(var + self._epsilon)
            y = y * self.weight.reshape([1, -1, 1, 1]) + self.bias.reshape([1, -1, 1, 1])
        return y.astype(x.dtype)


@contextlib.contextmanager
def double_backward_mode(net: nn.Layer):
    """Within it, net's BatchNorm2D layers compute with ops whose gradients Paddle
    differentiates again quickly (the penalties' forward of D, losses.py)."""
    norms = [layer for layer in net.sublayers(include_self=True) if isinstance(layer, BatchNorm2D)]
    for layer in norms:
        layer.elementwise = True
    try:
        yield
    finally:
        for layer in norms:
            layer.elementwise = False


def class_labels(labels, net: str):
    """Class labels as int64 [N] (from [N] or [N, 1]); refused when missing (a conditional net)."""
    if labels is None:
        raise ValueError(f"this {net} is class-conditional: pass labels (int64 [N])")
    return labels.reshape([-1])


class ConditionalBatchNorm2D(nn.Layer):
    """BatchNorm2D with no learned scale and shift, then the label's: y = gamma[label] * bn(x) +
    beta[label], gamma and beta [num_classes, C] embeddings initialised to 1 and 0 (the
    conditional generators of SNGAN and DCGAN).

    x [N, C, H, W], labels int64 [N] -> [N, C, H, W].
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = num_features
        # its own scale and shift held at 1 and 0 rather than absent: Paddle Inference's
        # conv2d_transpose_bias_bn fuse pass fails on a batch_norm without them (PIR, 3.3.1)
        fixed = lambda value: paddle.ParamAttr(  # noqa: E731
            initializer=nn.initializer.Constant(value), trainable=False
        )
        self.bn = nn.BatchNorm2D(num_features, weight_attr=fixed(1.0), bias_attr=fixed(0.0))
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.initializer.Constant(1.0)(self.gamma.weight)
        nn.initializer.Constant(0.0)(self.beta.weight)

    def forward(self, x, labels):
        _, c, h, w = x.shape
        # Each sample's gain and shift as [N*C, 1] columns over the [N*C, H*W] rows of bn(x):
        # the function of broadcasting [N, C, 1, 1] over [N, C, H, W], 4x faster forward +
        # backward on Paddle's CPU kernels (bench/RESULTS.md)
        rows = self.bn(x).reshape([-1, h * w])
        gamma, beta = self.gamma(labels).reshape([-1, 1]), self.beta(labels).reshape([-1, 1])
        return (rows * gamma + beta).reshape([-1, c, h, w])


def batch_norm_2d(num_features: int, num_classes: int) -> nn.Layer:
    """A generator's BatchNorm: conditional on the class when num_classes > 0."""
    if num_classes > 0:
        return ConditionalBatchNorm2D(num_features, num_classes)
    return nn.BatchNorm2D(num_features)


def normalise(bn: nn.Layer, x, labels):
    """bn(x), with the labels where bn is conditional."""
    return bn(x, labels) if isinstance(bn, ConditionalBatchNorm2D) else bn(x)


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


__all__ = [
    "BatchNorm2D",
    "ConditionalBatchNorm2D",
    "ConvPool2D",
    "batch_norm_2d",
    "class_labels",
    "normalise",
    "plain_conv_options",
    "Dropout",
    "double_backward_mode",
    "TwiceDifferentiableSpectralNorm",
    "UpsampleConv2D",
]

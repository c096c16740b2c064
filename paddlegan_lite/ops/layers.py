"""Faster twins of the layers the models are built from, for `ops.accelerate` to swap in.

Each subclasses the layer it replaces and overrides only `forward`: same parameters, buffers and
state_dict keys, same math (tests/unit/ops/test_layers.py and test_accelerate.py check outputs and
gradients, first and second order, against the plain layer); only the kernels Paddle runs differ.
Anything outside the fast cases runs the plain layer's code. On CPU the convolutions and the
leaky ReLU run on oneDNN where ops/onednn.py supports them; traced and static graphs (export)
always get Paddle's standard ops.
"""

from __future__ import annotations

import functools

import paddle
import paddle.nn.functional as F
from paddle import nn

from paddlegan_lite.models.layers import ConvPool2D, UpsampleConv2D, plain_conv_options
from paddlegan_lite.ops import onednn


def _padding_pair(padding):
    """(pad_h, pad_w) for an int or [pad_h, pad_w] padding; None for the other forms ("SAME",
    per-side lists), which the oneDNN path leaves to Paddle."""
    if isinstance(padding, int):
        return (padding, padding)
    if isinstance(padding, (list, tuple)) and len(padding) == 2:
        if all(isinstance(p, int) for p in padding):
            return tuple(padding)
    return None


def _use_onednn(layer, x, weight) -> bool:
    """Whether `layer`'s conv of x with `weight` may run on oneDNN (onednn.supported says when)."""
    return _padding_pair(layer._padding) is not None and onednn.supported(x, weight, layer.bias)


def _add_bias(y, bias):
    # Paddle's conv adds its bias as [1, C, 1, 1], a slow broadcast on CPU; [C, 1, 1] is the same
    # sum through a fast path (bench/RESULTS.md#measurements-behind-the-code)
    return y if bias is None else y + bias.reshape([-1, 1, 1])


class FastConv2D(nn.Conv2D):
    """nn.Conv2D. A kernel that covers its whole unpadded input (DCGAN's last D layer: 4x4 -> 1x1)
    is one matmul over the batch instead of a per-sample im2col + GEMM; other float32 convs on
    CPU run on oneDNN; elsewhere the bias is added as [C, 1, 1]."""

    def forward(self, x):
        if not plain_conv_options(self):
            return super().forward(x)
        if self._padding == 0 and list(x.shape[2:]) == list(self._kernel_size):
            # [N, Ci*kh*kw] @ [Co, Ci*kh*kw]^T: the conv's single output pixel per sample
            # (reshape, not flatten: Paddle 3.3's flatten_grad has no grad op, for penalties)
            weight = self.weight.reshape([self._out_channels, -1])
            flat = paddle.matmul(x.reshape([-1, weight.shape[1]]), weight, transpose_y=True)
            return _add_bias(flat.reshape([-1, self._out_channels, 1, 1]), self.bias)
        if _use_onednn(self, x, self.weight):
            padding = _padding_pair(self._padding)
            return onednn.conv2d(x, self.weight, self.bias, self._stride, padding)
        y = F.conv2d(x, self.weight, None, self._stride, self._padding, self._dilation)
        return _add_bias(y, self.bias)


class FastConv2DTranspose(nn.Conv2DTranspose):
    """nn.Conv2DTranspose; float32 on CPU runs on oneDNN (DCGAN's generator layers)."""

    def forward(self, x, output_size=None):
        fast = (
            output_size is None
            and _padding_pair(self.output_padding) == (0, 0)
            and plain_conv_options(self)
            and _use_onednn(self, x, self.weight)
        )
        if not fast:
            return super().forward(x, output_size)
        padding = _padding_pair(self._padding)
        return onednn.conv2d_transpose(x, self.weight, self.bias, self._stride, padding)


@functools.cache
def _fold(kernel_size: int, upsampling: bool) -> tuple:
    """[k + 1, k]: row r has ones at taps r - 1 and r of a k-tap kernel. Folded with 2x2 average
    pooling after it, a same-size conv's output row i averages conv rows 2i and 2i + 1, which
    read input row 2i + r - pad through exactly these taps: halved per axis, the mean of the 2x2
    window. Folded with 2x nearest upsampling before it, the same rows (not halved) reversed give
    the taps of a stride-2 transposed conv (its kernel runs flipped against a conv's)."""
    k = kernel_size
    rows = [[1.0 if 0 <= r - a <= 1 else 0.0 for a in range(k)] for r in range(k + 1)]
    if upsampling:
        return tuple(map(tuple, rows[::-1]))
    return tuple(tuple(0.5 * tap for tap in row) for row in rows)


def _folded_kernel(rows, weight):
    """fold @ weight @ fold^T over the last two axes: [Co, Ci, k, k] -> [Co, Ci, k+1, k+1], the
    fold in the weight's dtype (float16 weights after AMP O2 decorate)."""
    fold = paddle.to_tensor(rows, dtype=weight.dtype)
    return paddle.matmul(paddle.matmul(fold, weight), fold, transpose_y=True)


class FastUpsampleConv2D(UpsampleConv2D):
    """UpsampleConv2D (2x nearest upsampling, then a 3x3 or 1x1 conv) computed as one stride-2
    transposed conv whose (k+1)x(k+1) kernel sums the taps that read the same input pixel.

    Same function and same parameters, with 2.25x fewer multiply-adds for 3x3 (16 taps per 2x2
    output pixels instead of 36) and no upsampled copy
    (bench/RESULTS.md#measurements-behind-the-code).
    """

    def forward(self, x):
        """x [N, Ci, H, W] -> [N, Co, 2H, 2W]."""
        kernel = _folded_kernel(_fold(self._kernel_size[0], upsampling=True), self.weight)
        kernel = kernel.transpose([1, 0, 2, 3])  # [Ci, Co, ...]: the transposed-conv layout
        padding = (self._padding, self._padding)
        if onednn.supported(x, kernel, self.bias):
            return onednn.conv2d_transpose(x, kernel, self.bias, (2, 2), padding)
        y = F.conv2d_transpose(x, kernel, stride=2, padding=padding)
        return _add_bias(y, self.bias)


class FastConvPool2D(ConvPool2D):
    """ConvPool2D (a 3x3 or 1x1 conv, then 2x2 average pooling) computed as one stride-2 conv
    whose (k+1)x(k+1) kernel averages the taps that read the same input pixel.

    Same function and same parameters, with no pooling op and, for 3x3, 2.25x fewer
    multiply-adds (16 taps per output pixel instead of 4 x 9).
    """

    def forward(self, x):
        """x [N, Ci, H, W] -> [N, Co, H/2, W/2]."""
        kernel = _folded_kernel(_fold(self._kernel_size[0], upsampling=False), self.weight)
        padding = (self._padding, self._padding)
        if onednn.supported(x, kernel, self.bias):
            return onednn.conv2d(x, kernel, self.bias, (2, 2), padding)
        y = F.conv2d(x, kernel, stride=2, padding=padding)
        return _add_bias(y, self.bias)


class FastLeakyReLU(nn.LeakyReLU):
    """nn.LeakyReLU; float32 on CPU runs on oneDNN (multi-threaded, where Paddle's CPU kernel uses
    one thread) for a slope >= 0, which its backward needs: it reads the output. One difference:
    at an input of exactly 0 oneDNN's gradient is the slope (as PyTorch's), Paddle's 1."""

    def forward(self, x):
        if self._negative_slope >= 0 and onednn.activation_supported(x):
            return onednn.leaky_relu(x, self._negative_slope)
        return super().forward(x)


# The layer classes accelerate swaps (exact types: a subclass has a forward of its own) -> twins
FAST_TWINS = {
    nn.Conv2D: FastConv2D,
    nn.Conv2DTranspose: FastConv2DTranspose,
    nn.LeakyReLU: FastLeakyReLU,
    UpsampleConv2D: FastUpsampleConv2D,
    ConvPool2D: FastConvPool2D,
}

__all__ = [
    "FAST_TWINS",
    "FastConv2D",
    "FastConv2DTranspose",
    "FastConvPool2D",
    "FastLeakyReLU",
    "FastUpsampleConv2D",
]

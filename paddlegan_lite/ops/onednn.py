"""DCGAN's convolutions on CPU through oneDNN, the library inside the Paddle wheel, via ctypes.

Paddle 3.3's dynamic-graph CPU convolution runs im2col (or col2im) plus one GEMM per sample;
oneDNN's direct convolutions over the whole batch, which PyTorch runs, take 0.5-1.0x its time on
DCGAN's layers (forward and backward: 0.6-0.85x).
`conv2d` and `conv2d_transpose` compute Paddle's functions (same layouts, float32) with them, as
a PyLayer that also serves `paddle.grad` for some of its inputs and, through Paddle's stock ops,
`create_graph=True` (R1 and gradient penalties). `supported` says when they apply (all tensors
on the CPU; mixed devices are refused); everywhere else callers run the stock Paddle op.
The discriminators' LeakyReLU runs on oneDNN's eltwise primitive the same way (`leaky_relu`).
Threads: this libdnnl is an OpenMP build running on the libiomp5 Paddle loads and sizes, so it
uses Paddle's thread count (runtime.use_cpu_threads: every physical core unless told otherwise;
tests/unit/test_runtime.py reads oneDNN's own count back); PADDLEGAN_LITE_ONEDNN=0 switches it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from pathlib import Path

import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from paddlegan_lite.logger import log

try:  # SOT tracing simulates the dynamic mode: only these tell it apart (Paddle 2.6-3.x)
    from paddle.base.dygraph.base import in_sot_simulation_mode, in_to_static_mode
except ImportError:  # a Paddle without them: in_dynamic_mode() is all there is to go by

    def in_sot_simulation_mode() -> bool:
        return False

    in_to_static_mode = in_sot_simulation_mode

ENV_SWITCH = "PADDLEGAN_LITE_ONEDNN"  # "0" runs the stock Paddle ops everywhere
LIBRARY_FILE = "libdnnl.so.3"  # oneDNN 3.x, in paddle/libs since Paddle 2.5
MAX_CACHED_PLANS = 64  # one per (layer, batch shape); a run uses a dozen or two
# oneDNN 3.6's kernels for the data-gradient direction (conv backward-data, which is also the
# transposed conv's forward) are several times slower than Paddle's when the side they write has
# few channels, as DCGAN's 1- and 3-channel image layers do (its fast kernels want 16+
# channels; bench/RESULTS.md#measurements-behind-the-code). So Paddle computes D's first layer's
# input gradient, and G's last layer entirely (oneDNN's other two directions saved nothing there
# after their reorders).
FEW_CHANNELS = 16

# oneDNN 3.x C API values (include/oneapi/dnnl/dnnl_types.h; `_check_abi` asks the loaded
# library to name the enum values, so another oneDNN numbering falls back instead of misrunning)
F32 = 3  # dnnl_f32
TAG_ANY, TAG_A, TAG_ABCD, TAG_BACD = 1, 2, 5, 25  # dnnl_format_tag_t
FORWARD_TRAINING = 64  # dnnl_prop_kind_t; the backward primitives take a training forward as hint
CONVOLUTION_DIRECT, DECONVOLUTION_DIRECT = 1, 10  # dnnl_alg_kind_t
# relu with alpha is leaky ReLU; this variant's backward reads the output (alpha >= 0 only)
ELTWISE_RELU_USE_DST = 0x100
QUERY_SRC, QUERY_DIFF_SRC, QUERY_WEIGHTS, QUERY_DIFF_WEIGHTS = 129, 130, 131, 132  # dnnl_query_t
QUERY_DST, QUERY_DIFF_DST = 133, 134
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41  # DNNL_ARG_*; reorders: FROM=SRC, TO=DST
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
ENGINE_CPU = 1  # dnnl_engine_kind_t
STREAM_IN_ORDER = 1  # dnnl_stream_flags_t
MAX_NDIMS = 12  # DNNL_MAX_NDIMS: the length of dnnl_dims_t
ENUM_NAMES = {  # function -> {value: the name the library must give it}
    "dnnl_dt2str": {F32: b"f32"},
    "dnnl_fmt_tag2str": {TAG_ANY: b"any", TAG_A: b"a", TAG_ABCD: b"abcd", TAG_BACD: b"bacd"},
    "dnnl_prop_kind2str": {FORWARD_TRAINING: b"forward_training"},
    "dnnl_alg_kind2str": {
        CONVOLUTION_DIRECT: b"convolution_direct",
        DECONVOLUTION_DIRECT: b"deconvolution_direct",
        ELTWISE_RELU_USE_DST: b"eltwise_relu_use_dst_for_bwd",
    },
    "dnnl_engine_kind2str": {ENGINE_CPU: b"cpu"},
}

_Dims = ctypes.c_int64 * MAX_NDIMS
_Handle = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _Handle)]  # dnnl_exec_arg_t


class OnednnError(RuntimeError):
    """A oneDNN call that did not return dnnl_success."""


class PlaceError(ValueError):
    """Tensors of one convolution on different devices."""


# ---------------------------------------------------------------------- the library
class _Library:
    """The loaded libdnnl with typed functions, one CPU engine and one in-order stream."""

    def __init__(self, path: Path):
        self.dll = ctypes.CDLL(str(path))
        self._declare_functions()
        _check_abi(self.dll)
        self.engine = _Handle()
        self.call("dnnl_engine_create", ctypes.byref(self.engine), ENGINE_CPU, 0)
        self.stream = _Handle()
        self.call("dnnl_stream_create", ctypes.byref(self.stream), self.engine, STREAM_IN_ORDER)

    def _declare_functions(self):
        # restype/argtypes keep ctypes from truncating 64-bit pointers and sizes to int
        status, h, p = ctypes.c_int, _Handle, ctypes.POINTER(_Handle)
        signatures = {
            "dnnl_engine_create": (status, [p, ctypes.c_int, ctypes.c_size_t]),
            "dnnl_stream_create": (status, [p, h, ctypes.c_uint]),
            "dnnl_stream_wait": (status, [h]),
            "dnnl_memory_desc_create_with_tag": (
                status,
                [p, ctypes.c_int, _Dims, ctypes.c_int, ctypes.c_int],
            ),
            "dnnl_memory_desc_destroy": (status, [h]),
            "dnnl_memory_desc_equal": (ctypes.c_int, [h, h]),
            "dnnl_memory_desc_get_size": (ctypes.c_size_t, [h]),
            "dnnl_memory_create": (status, [p, h, h, h]),
            "dnnl_memory_destroy": (status, [h]),
            "dnnl_primitive_desc_query_md": (h, [h, ctypes.c_int, ctypes.c_int]),
            "dnnl_primitive_desc_destroy": (status, [h]),
            "dnnl_primitive_create": (status, [p, h]),
            "dnnl_primitive_destroy": (status, [h]),
            "dnnl_primitive_execute": (status, [h, h, ctypes.c_int, ctypes.POINTER(_ExecArg)]),
            "dnnl_reorder_primitive_desc_create": (status, [p, h, h, h, h, h]),
            "dnnl_status2str": (ctypes.c_char_p, [ctypes.c_int]),
        }
        fwd = [p, h, ctypes.c_int, ctypes.c_int, h, h, h, h, _Dims, _Dims, _Dims, _Dims, h]
        bwd = [p, h, ctypes.c_int, h, h, h, _Dims, _Dims, _Dims, _Dims, h, h]  # data
        bwd_w = [p, h, ctypes.c_int, h, h, h, h, _Dims, _Dims, _Dims, _Dims, h, h]  # weights
        for op in ("convolution", "deconvolution"):
            signatures[f"dnnl_{op}_forward_primitive_desc_create"] = (status, fwd)
            signatures[f"dnnl_{op}_backward_data_primitive_desc_create"] = (status, bwd)
            signatures[f"dnnl_{op}_backward_weights_primitive_desc_create"] = (status, bwd_w)
        f = ctypes.c_float
        signatures["dnnl_eltwise_forward_primitive_desc_create"] = (
            status,
            [p, h, ctypes.c_int, ctypes.c_int, h, h, f, f, h],
        )
        signatures["dnnl_eltwise_backward_primitive_desc_create"] = (
            status,
            [p, h, ctypes.c_int, h, h, h, f, f, h, h],
        )
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(self.dll, name)
            fn.restype, fn.argtypes = restype, argtypes

    def call(self, name: str, *args) -> None:
        status = getattr(self.dll, name)(*args)
        if status != 0:
            raise OnednnError(f"{name}: {self.dll.dnnl_status2str(status).decode()}")

    def memory_desc(self, dims, tag: int) -> int:
        """A float32 memory descriptor (its address: what oneDNN calls take and return)."""
        md = _Handle()
        self.call(
            "dnnl_memory_desc_create_with_tag", ctypes.byref(md), len(dims), _dims(dims), F32, tag
        )
        return md.value


def _dims(values) -> _Dims:
    return _Dims(*[int(v) for v in values])


def _check_abi(dll) -> None:
    """Refuse a libdnnl whose enum values are not the ones this module passes."""
    for function, names in ENUM_NAMES.items():
        to_str = getattr(dll, function)
        to_str.restype, to_str.argtypes = ctypes.c_char_p, [ctypes.c_int]
        for value, name in names.items():
            if to_str(value) != name:
                raise OnednnError(f"{function}({value}) is {to_str(value)!r}, expected {name!r}")


_library_lock = threading.Lock()
_library: _Library | None = None
_library_failed = False
_warned = False


def _warn_once(message: str) -> None:
    """At most one log line per process: the fallback is correct, only slower."""
    global _warned
    if not _warned:
        _warned = True
        log.warning(f"{message}; using Paddle's own ops")


def library() -> _Library | None:
    """The oneDNN library, loaded on first use; None (and one log line) if it cannot be used."""
    global _library, _library_failed
    with _library_lock:
        if _library is None and not _library_failed:
            try:
                _library = _Library(Path(paddle.__file__).parent / "libs" / LIBRARY_FILE)
            except (OSError, AttributeError, OnednnError) as exc:
                _library_failed = True
                _warn_once(f"oneDNN convolutions unavailable ({exc})")
        return _library


def enabled() -> bool:
    """Whether the fast path may run at all: Linux, not switched off, library loadable."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return library() is not None


def tracing() -> bool:
    """Whether Paddle is building a graph (static mode, paddle.jit's AST or SOT tracing) rather
    than running the dynamic one: traced code must hold Paddle's standard ops only."""
    return not paddle.in_dynamic_mode() or in_to_static_mode() or in_sot_simulation_mode()


def on_cpu(what: str, **tensors) -> bool:
    """Whether all `tensors` (by name; None skipped) are on the CPU, where oneDNN may read them;
    False when they share one other device (the stock op runs there). Raises PlaceError naming
    them when they differ: oneDNN would take a device pointer for host memory."""
    places = {name: t.place for name, t in tensors.items() if t is not None}
    if all(place.is_cpu_place() for place in places.values()):
        return True
    (first, place), *others = places.items()
    for name, other in others:
        if str(other) != str(place):
            first, name = first.replace("_", " "), name.replace("_", " ")
            raise PlaceError(f"{what} {first} on {place} but {name} on {other}")
    return False


def supported(x, weight, bias=None) -> bool:
    """Whether conv2d/conv2d_transpose may run on these tensors: the dynamic graph on CPU, float32
    4-D input, a non-empty batch. Traced and static graphs keep Paddle's standard ops, so exported
    models hold nothing of this module. Tensors on different devices raise PlaceError."""
    return (
        not tracing()
        and enabled()
        and on_cpu("conv", input=x, weight=weight, bias=bias)
        and x.ndim == 4
        and x.shape[0] > 0
        and x.dtype == paddle.float32
        and weight.dtype == paddle.float32
        # new tensors go to Paddle's current device: it must be the CPU too
        and (not paddle.is_compiled_with_cuda() or paddle.device.get_device() == "cpu")
    )


def activation_supported(x) -> bool:
    """Whether leaky_relu may run on x: the dynamic graph, x float32, non-empty, on the CPU."""
    return (
        not tracing()
        and enabled()
        and on_cpu("leaky_relu", input=x)
        and x.dtype == paddle.float32
        and x.size > 0
        and (not paddle.is_compiled_with_cuda() or paddle.device.get_device() == "cpu")
    )


# ---------------------------------------------------------------------- primitives
class _Primitive:
    """A oneDNN primitive made from primitive descriptor `pd`, run on tensors given per argument.

    `mds` holds each argument's memory descriptor (owned by `pd` or by the plan)."""

    def __init__(self, lib: _Library, pd: _Handle, mds: dict[int, int]):
        self.lib, self.pd, self.mds = lib, pd, mds
        self.handle = _Handle()
        lib.call("dnnl_primitive_create", ctypes.byref(self.handle), pd)

    def __call__(self, tensors: dict) -> None:
        lib, memories = self.lib, []
        try:
            for arg, tensor in tensors.items():
                memory = _Handle()  # a view of the tensor's buffer: oneDNN allocates nothing
                lib.call(
                    "dnnl_memory_create",
                    ctypes.byref(memory),
                    self.mds[arg],
                    lib.engine,
                    tensor.data_ptr(),
                )
                memories.append(memory)
            args = [_ExecArg(arg, memory) for arg, memory in zip(tensors, memories)]
            lib.call(
                "dnnl_primitive_execute",
                self.handle,
                lib.stream,
                len(args),
                (_ExecArg * len(args))(*args),
            )
            lib.call("dnnl_stream_wait", lib.stream)
        finally:
            for memory in memories:
                lib.dll.dnnl_memory_destroy(memory)

    def __del__(self):
        try:
            self.lib.dll.dnnl_primitive_destroy(self.handle)
            self.lib.dll.dnnl_primitive_desc_destroy(self.pd)
        except Exception:  # interpreter shutdown: ctypes may be gone already
            pass


def _flat_empty(lib: _Library, md: int):
    """An uninitialised float32 tensor of md's size (blocked layouts may pad the channels)."""
    return paddle.empty([lib.dll.dnnl_memory_desc_get_size(md) // 4], dtype="float32")


# ---------------------------------------------------------------------- one conv geometry
class _ConvPlan:
    """The primitives and layouts of one convolution geometry (shapes, stride, padding).

    Tensors come and go in Paddle's layouts (NCHW; weights OIHW, or IOHW for transposed convs).
    Each primitive works in the layouts oneDNN picks for it (`format_tag any`: channel-blocked
    ones, its fast kernels), and reorders convert at the edges, as PyTorch does. The backward
    primitives are made on first use: inference never needs them.
    """

    def __init__(self, lib: _Library, key: tuple):
        transposed, x_shape, w_shape, stride, padding, has_bias = key
        self.lib, self.transposed = lib, transposed
        self.x_shape, self.w_shape = list(x_shape), list(w_shape)
        self.op = "deconvolution" if transposed else "convolution"
        self.alg = DECONVOLUTION_DIRECT if transposed else CONVOLUTION_DIRECT
        # oneDNN's weight is [Co, Ci, kh, kw] for both; Paddle's transposed-conv weight is
        # [Ci, Co, kh, kw], the same memory as oneDNN's "bacd" order
        ci, co = (w_shape[0], w_shape[1]) if transposed else (w_shape[1], w_shape[0])
        kernel = w_shape[2:]
        self.y_shape = [
            x_shape[0],
            co,
            *_output_size(transposed, x_shape[2:], kernel, stride, padding),
        ]
        self.stride, self.padding = list(stride), list(padding)
        self.geometry = (_dims(stride), _dims([0, 0]), _dims(padding), _dims(padding))
        self.stock_input_grad = not transposed and ci < FEW_CHANNELS  # D's first layer
        self._own_mds = []  # created here, destroyed with the plan
        self.x_md = self._md(x_shape, TAG_ABCD)
        self.w_md = self._md([co, ci, *kernel], TAG_BACD if transposed else TAG_ABCD)
        self.y_md = self._md(self.y_shape, TAG_ABCD)
        self.b_md = self._md([co], TAG_A) if has_bias else None
        self.any_x = self._md(x_shape, TAG_ANY)
        self.any_w = self._md([co, ci, *kernel], TAG_ANY)
        self.any_y = self._md(self.y_shape, TAG_ANY)
        self._reorders: dict[tuple[int, int], _Primitive] = {}
        self.fwd = self._forward_primitive()
        self.bwd_data = self.bwd_weights = None

    def _md(self, dims, tag: int) -> int:
        md = self.lib.memory_desc(dims, tag)
        self._own_mds.append(md)
        return md

    def _create(self, kind: str, *args) -> _Handle:
        pd = _Handle()
        self.lib.call(
            f"dnnl_{self.op}_{kind}_primitive_desc_create", ctypes.byref(pd), self.lib.engine, *args
        )
        return pd

    def _primitive(self, pd: _Handle, queries: dict[int, int], fixed: dict) -> _Primitive:
        """The primitive of `pd`, with the layouts it chose for each argument."""
        query = self.lib.dll.dnnl_primitive_desc_query_md
        mds = {arg: query(pd, what, 0) for arg, what in queries.items()}
        return _Primitive(self.lib, pd, {**mds, **fixed})

    def _forward_primitive(self) -> _Primitive:
        pd = self._create(
            "forward",
            FORWARD_TRAINING,
            self.alg,
            self.any_x,
            self.any_w,
            self.b_md,
            self.any_y,
            *self.geometry,
            None,
        )
        queries = {ARG_SRC: QUERY_SRC, ARG_WEIGHTS: QUERY_WEIGHTS, ARG_DST: QUERY_DST}
        return self._primitive(pd, queries, {ARG_BIAS: self.b_md} if self.b_md else {})

    def _make_backward(self) -> None:
        if self.bwd_weights is not None:
            return
        fwd = self.fwd.pd  # the hint makes the backward agree with the forward's choices
        pd = self._create(
            "backward_data", self.alg, self.any_x, self.any_w, self.any_y, *self.geometry, fwd, None
        )
        queries = {
            ARG_DIFF_SRC: QUERY_DIFF_SRC,
            ARG_WEIGHTS: QUERY_WEIGHTS,
            ARG_DIFF_DST: QUERY_DIFF_DST,
        }
        self.bwd_data = self._primitive(pd, queries, {})
        pd = self._create(
            "backward_weights",
            self.alg,
            self.any_x,
            self.any_w,
            self.b_md,
            self.any_y,
            *self.geometry,
            fwd,
            None,
        )
        queries = {
            ARG_SRC: QUERY_SRC,
            ARG_DIFF_WEIGHTS: QUERY_DIFF_WEIGHTS,
            ARG_DIFF_DST: QUERY_DIFF_DST,
        }
        fixed = {ARG_DIFF_BIAS: self.b_md} if self.b_md else {}
        self.bwd_weights = self._primitive(pd, queries, fixed)

    def _convert(self, tensor, src_md: int, dst_md: int):
        """`tensor`, laid out as src_md, in layout dst_md: itself when they are the same, else a
        copy made by a (cached) reorder primitive."""
        lib = self.lib
        if lib.dll.dnnl_memory_desc_equal(src_md, dst_md):
            return tensor
        step = self._reorders.get((src_md, dst_md))
        if step is None:
            pd = _Handle()
            lib.call(
                "dnnl_reorder_primitive_desc_create",
                ctypes.byref(pd),
                src_md,
                lib.engine,
                dst_md,
                lib.engine,
                None,
            )
            step = self._reorders[src_md, dst_md] = _Primitive(
                lib, pd, {ARG_SRC: src_md, ARG_DST: dst_md}
            )
        out = _flat_empty(lib, dst_md)
        step({ARG_SRC: tensor, ARG_DST: out})
        return out

    # ------------------------------------------------------------------ running
    # Tensors travel with their layout as (tensor, memory descriptor) pairs, "laid" below.
    def forward(self, x, weight, bias):
        """(y [N, Co, Ho, Wo], laid x and laid weight as the forward read them)."""
        mds = self.fwd.mds
        src = self._convert(x, self.x_md, mds[ARG_SRC])
        wei = self._convert(weight, self.w_md, mds[ARG_WEIGHTS])
        dst = _flat_empty(self.lib, mds[ARG_DST])
        args = {ARG_SRC: src, ARG_WEIGHTS: wei, ARG_DST: dst}
        if bias is not None:
            args[ARG_BIAS] = bias
        self.fwd(args)
        y = self._convert(dst, mds[ARG_DST], self.y_md).reshape(self.y_shape)
        return y, (src, mds[ARG_SRC]), (wei, mds[ARG_WEIGHTS])

    def input_grad(self, dy, weight, laid_weight):
        """(dL/dx [N, Ci, H, W], laid dy or None), from dL/dy [N, Co, Ho, Wo], the weight and the
        laid weight of the forward (reused when the backward wants the same layout)."""
        if self.stock_input_grad:  # see FEW_CHANNELS
            dx = F.conv2d_transpose(
                dy, weight, None, self.stride, self.padding, output_size=self.x_shape[2:]
            )
            return dx, None
        self._make_backward()
        mds = self.bwd_data.mds
        wei = self._convert(*laid_weight, mds[ARG_WEIGHTS])
        diff_dst = self._convert(dy, self.y_md, mds[ARG_DIFF_DST])
        diff_src = _flat_empty(self.lib, mds[ARG_DIFF_SRC])
        self.bwd_data({ARG_DIFF_SRC: diff_src, ARG_WEIGHTS: wei, ARG_DIFF_DST: diff_dst})
        dx = self._convert(diff_src, mds[ARG_DIFF_SRC], self.x_md).reshape(self.x_shape)
        return dx, (diff_dst, mds[ARG_DIFF_DST])

    def weight_grad(self, dy, laid_x, laid_dy=None):
        """(dL/dweight in Paddle's weight layout, dL/dbias or None), from dL/dy, the laid x of the
        forward and, if the input gradient made one, the laid dy."""
        self._make_backward()
        mds = self.bwd_weights.mds
        src = self._convert(*laid_x, mds[ARG_SRC])
        diff_dst = self._convert(*(laid_dy or (dy, self.y_md)), mds[ARG_DIFF_DST])
        diff_wei = _flat_empty(self.lib, mds[ARG_DIFF_WEIGHTS])
        args = {ARG_SRC: src, ARG_DIFF_WEIGHTS: diff_wei, ARG_DIFF_DST: diff_dst}
        db = None
        if self.b_md is not None:
            db = args[ARG_DIFF_BIAS] = paddle.empty([self.y_shape[1]], dtype="float32")
        self.bwd_weights(args)
        dw = self._convert(diff_wei, mds[ARG_DIFF_WEIGHTS], self.w_md).reshape(self.w_shape)
        return dw, db

    def __del__(self):
        try:
            for md in self._own_mds:
                self.lib.dll.dnnl_memory_desc_destroy(md)
        except Exception:  # interpreter shutdown
            pass


def _output_size(transposed: bool, size, kernel, stride, padding) -> list[int]:
    """Output side per spatial axis (no output_padding, no dilation)."""
    if transposed:
        return [(s - 1) * st - 2 * p + k for s, k, st, p in zip(size, kernel, stride, padding)]
    return [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding)]


def _build_plan(plan_class, key: tuple, what: str):
    """plan_class(library(), key), or None (and one log line) if oneDNN refuses it."""
    try:
        return plan_class(library(), key)
    except OnednnError as exc:
        _warn_once(f"oneDNN cannot run {what} of {key} ({exc})")
        return None


@functools.lru_cache(maxsize=MAX_CACHED_PLANS)
def _plan(key: tuple) -> _ConvPlan | None:
    """The plan of a geometry; None (cached too) if oneDNN refuses it."""
    return _build_plan(_ConvPlan, key, "a convolution")


# ---------------------------------------------------------------------- autograd
class _OnednnConv(PyLayer):
    """y = conv(x, weight) + bias through a plan; the backward computes only the gradients of
    inputs that need one (the D step's images need none, the frozen D's weights neither).

    The tensors come as one list argument, those wanting a gradient first. `paddle.grad` for
    some tensors prunes the edges to the others per argument and then demands None there, which
    a PyLayer cannot see; a node with one argument is never pruned, and for a list the None check
    reads its first tensor only (Paddle 3.3: general_grad.h, py_layer_node.cc). So such a
    `paddle.grad` also computes the gradients nobody asked for, then drops them.
    Under create_graph=True the backward runs Paddle's stock ops (`_stock_grads`), which can be
    differentiated again; plain backward() keeps oneDNN.
    """

    @staticmethod
    def forward(ctx, tensors, names, plan):
        named = dict(zip(names, tensors))
        x, weight = named["x"], named["weight"]
        y, laid_x, laid_weight = plan.forward(x, weight, named.get("bias"))
        ctx.plan, ctx.names = plan, names
        ctx.wants = {name for name, t in named.items() if not t.stop_gradient}
        # keep only what the wanted gradients read (the weight for dx, x for dW); the layouts
        # are descriptors owned by the plan, so they stay on ctx beside it. x itself (not only
        # its oneDNN copy) is for create_graph: its gradients must link to x's graph.
        need_x, need_w = "x" in ctx.wants, bool(ctx.wants - {"x"})
        ctx.save_for_backward(
            weight,
            x if need_w else None,
            laid_weight[0] if need_x else None,
            laid_x[0] if need_w and laid_x[0] is not x else None,
        )
        ctx.layouts = (laid_weight[1], laid_x[1])
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, x, laid_weight, laid_x = ctx.saved_tensor()
        on_cpu("conv backward", weight=weight, output_gradient=dy)  # raises if dy is elsewhere
        plan, wants = ctx.plan, ctx.wants
        if paddle.is_grad_enabled():  # create_graph=True: gradients to differentiate again
            grads = _stock_grads(plan, dy, x, weight, wants)
        else:
            weight_md, x_md = ctx.layouts
            dy = dy.contiguous()
            grads, laid_dy = {}, None
            if "x" in wants:
                grads["x"], laid_dy = plan.input_grad(dy, weight, (laid_weight, weight_md))
            if wants - {"x"}:
                laid_x = x if laid_x is None else laid_x
                grads["weight"], grads["bias"] = plan.weight_grad(dy, (laid_x, x_md), laid_dy)
        return [grads[name] if name in wants else None for name in ctx.names]


def _stock_grads(plan: _ConvPlan, dy, x, weight, wants: set) -> dict:
    """The gradients named in `wants` ("x", "weight", "bias") from dy, by Paddle's stock ops so
    that they can be differentiated again. Each is a plain convolution: the backward of these
    needs no conv2d_transpose double-grad kernel (Paddle 3.3 has none on CPU)."""
    stride, padding = plan.stride, plan.padding
    grads = {}
    if "x" in wants:
        if plan.transposed:
            grads["x"] = F.conv2d(dy, weight, None, stride, padding)
        else:
            size = plan.x_shape[2:]
            grads["x"] = F.conv2d_transpose(dy, weight, None, stride, padding, output_size=size)
    if "weight" in wants:
        # dW[o, i, a, b] sums dy[n, o, h, w] * x[n, i, h * stride + a - pad, ...] over n, h, w:
        # a stride-1 conv over the batch axis, dilated by the stride; conv2d's dW is cropped to
        # the kernel (its ends may reach past the last window)
        swap = [1, 0, 2, 3]
        if plan.transposed:  # x [N, Ci, H, W] plays dy's part: [Co, Ci, kh, kw] -> Paddle's
            dw = F.conv2d(dy.transpose(swap), x.transpose(swap), None, 1, padding, stride)
        else:
            dw = F.conv2d(x.transpose(swap), dy.transpose(swap), None, 1, padding, stride)
            dw = dw[:, :, : plan.w_shape[2], : plan.w_shape[3]]
        grads["weight"] = dw.transpose(swap)
    if "bias" in wants:
        grads["bias"] = dy.sum([0, 2, 3])
    return grads


def _run(transposed: bool, x, weight, bias, stride, padding):
    if transposed and weight.shape[1] < FEW_CHANNELS:  # G's last layer: see FEW_CHANNELS
        return F.conv2d_transpose(x, weight, bias, stride, padding)
    x, weight = x.contiguous(), weight.contiguous()
    key = (
        transposed,
        tuple(x.shape),
        tuple(weight.shape),
        tuple(stride),
        tuple(padding),
        bias is not None,
    )
    plan = _plan(key)
    if plan is None:
        stock = F.conv2d_transpose if transposed else F.conv2d
        return stock(x, weight, bias, stride, padding)
    named = {"x": x, "weight": weight, "bias": bias}
    names = [name for name, t in named.items() if t is not None]
    if not paddle.is_grad_enabled() or all(named[name].stop_gradient for name in names):
        return plan.forward(x, weight, bias)[0]  # inference: no autograd node, nothing kept
    names.sort(key=lambda name: named[name].stop_gradient)  # wanting a gradient first
    return _OnednnConv.apply([named[name] for name in names], names, plan)


def conv2d(x, weight, bias, stride, padding):
    """F.conv2d(x, weight, bias, stride, padding) for NCHW x [N, Ci, H, W], weight
    [Co, Ci, kh, kw], bias [Co] or None, stride and padding (h, w) pairs; no groups/dilation.
    Call only where `supported(x, weight, bias)`; a geometry oneDNN refuses runs F.conv2d."""
    return _run(False, x, weight, bias, stride, padding)


def conv2d_transpose(x, weight, bias, stride, padding):
    """F.conv2d_transpose(x, weight, bias, stride, padding) for NCHW x [N, Ci, H, W], weight
    [Ci, Co, kh, kw], bias [Co] or None, stride and padding (h, w) pairs; no output_padding,
    groups or dilation. Call only where `supported(x, weight, bias)`."""
    return _run(True, x, weight, bias, stride, padding)


# ---------------------------------------------------------------------- leaky ReLU
class _EltwisePlan:
    """Leaky ReLU of `size` contiguous floats (any shape, as plain layout "a"): oneDNN's relu with
    alpha = the slope, its backward reading the output. Paddle 3.3's CPU activation kernels use
    one thread; oneDNN's use Paddle's thread count (bench/RESULTS.md). The gradient at x = 0
    exactly is the slope (y > 0 decides, as in PyTorch), where Paddle's is 1 (x >= 0)."""

    def __init__(self, lib: _Library, key: tuple):
        size, self.slope = key
        self.lib = lib
        self.md = lib.memory_desc([size], TAG_A)
        pd = _Handle()
        lib.call(
            "dnnl_eltwise_forward_primitive_desc_create",
            ctypes.byref(pd),
            lib.engine,
            FORWARD_TRAINING,
            ELTWISE_RELU_USE_DST,
            self.md,
            self.md,
            self.slope,
            0.0,
            None,
        )
        self.fwd = _Primitive(lib, pd, {ARG_SRC: self.md, ARG_DST: self.md})
        self.bwd = None

    def forward(self, x):
        """leaky_relu(x), x contiguous."""
        y = paddle.empty(x.shape, dtype="float32")
        self.fwd({ARG_SRC: x, ARG_DST: y})
        return y

    def backward(self, y, dy):
        """dL/dx from the forward's output y and dL/dy (both contiguous)."""
        if self.bwd is None:
            pd = _Handle()
            self.lib.call(
                "dnnl_eltwise_backward_primitive_desc_create",
                ctypes.byref(pd),
                self.lib.engine,
                ELTWISE_RELU_USE_DST,
                self.md,
                self.md,
                self.md,
                self.slope,
                0.0,
                self.fwd.pd,
                None,
            )
            mds = {ARG_DST: self.md, ARG_DIFF_DST: self.md, ARG_DIFF_SRC: self.md}
            self.bwd = _Primitive(self.lib, pd, mds)
        dx = paddle.empty(y.shape, dtype="float32")
        self.bwd({ARG_DST: y, ARG_DIFF_DST: dy, ARG_DIFF_SRC: dx})
        return dx

    def __del__(self):
        try:
            self.lib.dll.dnnl_memory_desc_destroy(self.md)
        except Exception:  # interpreter shutdown
            pass


@functools.lru_cache(maxsize=MAX_CACHED_PLANS)
def _eltwise_plan(key: tuple) -> _EltwisePlan | None:
    """The plan of (size, slope); None (cached too) if oneDNN refuses it."""
    return _build_plan(_EltwisePlan, key, "a leaky ReLU")


class _OnednnLeakyReLU(PyLayer):
    """y = leaky_relu(x) through a plan, keeping y (not x) for the backward. Under
    create_graph=True the backward is Paddle ops (dy times the slope where y <= 0, as Paddle's
    leaky_relu_grad), which can be differentiated again."""

    @staticmethod
    def forward(ctx, x, plan):
        y = plan.forward(x)
        ctx.plan = plan
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensor()
        on_cpu("leaky_relu backward", output=y, output_gradient=dy)  # raises if dy is elsewhere
        if paddle.is_grad_enabled():  # create_graph=True
            with paddle.no_grad():
                scale = paddle.where(
                    y > 0, paddle.ones_like(y), paddle.full_like(y, ctx.plan.slope)
                )
            return dy * scale
        return ctx.plan.backward(y, dy.contiguous())


def leaky_relu(x, negative_slope: float):
    """F.leaky_relu(x, negative_slope) for float32 x of any shape and negative_slope >= 0. Call
    only where `activation_supported(x)`."""
    x = x.contiguous()
    plan = _eltwise_plan((x.size, float(negative_slope)))
    if plan is None:
        return F.leaky_relu(x, negative_slope)
    if not paddle.is_grad_enabled() or x.stop_gradient:
        return plan.forward(x)  # inference: no autograd node, nothing kept
    return _OnednnLeakyReLU.apply(x, plan)

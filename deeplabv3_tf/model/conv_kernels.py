"""How the convs of the DeepLabv3 graph are computed, where the native op is slow.

`AtrousConv2D` (model/layers.py) picks among these:

- Native: `tf.nn.conv2d(..., dilations=rate)`, one oneDNN (or cuDNN) op that
  skips the taps falling into the zero padding.
- Taps (`atrous_conv` with implementation "taps"): a stride-1 "same" atrous
  conv as one matmul per kernel tap, over the output positions where that tap
  lands inside the input: y[p] = sum_t x[p + offset_t] @ W_t. The taps that only
  ever see padding cost nothing (at rate >= the feature map, only the centre
  tap is left), and every matmul is [positions, C_in] x [C_in, C_out], the shape
  matmul kernels run at their peak. Its gradients are taps too: the input
  gradient dx[p + offset_t] += dy[p] @ W_t^T and the filter gradient
  dW_t = x_shifted^T @ dy, each over the same positions.
- In training, the filter gradient is always computed by taps (oneDNN computes
  every tap of it, padding included: for ASPP at output stride 16 on a 321x321
  crop it took 140 ms a float32 step where the taps take 42), and 1x1 convs take
  their gradients as two matmuls (`conv1x1_matmul_gradients`).

Which of native and taps runs the forward pass and input gradient of an atrous
conv (`atrous_conv_implementation`): native unless the environment variable
DEEPLABV3_ATROUS_CONV says "taps" (read when the graph is traced). Measured on
the AMD EPYC (AVX512_BF16, 2 cores; bench/README.md, "AMD EPYC"): alone, ASPP's convs
(2048 -> 256 at 33x33 and 65x65, rates 6-36) ran 7-24 % faster by taps in
float32 and 20 % slower in bfloat16, the backbone's 256/512-channel dilated convs
0-37 % slower in float32; in the whole R101 graph, float32 taps on ASPP alone
were no faster at OS16 (830 against 845 ms) and 8 % slower at OS8 (the input
slices of a 65x65x2048 map cost more than the padding they skip), the training
step unchanged. On the Intel Xeon with AMX, oneDNN's dilated bfloat16 kernel ran
ASPP at 13-20 % of the AMX matmul peak: "taps" is the candidate there, to be
chosen by measurement (`python bench/atrous.py --whole --train`;
`DEEPLABV3_ATROUS_CONV=taps python bench/speed.py`).
Both compute the same function (tests/model/test_conv_kernels.py).
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf

IMPLEMENTATIONS = ("native", "taps")
ENVIRONMENT_VARIABLE = "DEEPLABV3_ATROUS_CONV"


@functools.cache
def native_dilated_conv_supported(dtype: str = "float32") -> bool:
    """Whether dilated Conv2D and its gradients run natively in `dtype` here.

    cuDNN does, in every dtype. On CPU, oneDNN (on by default in x86-64 Linux
    builds) does in float32 and bfloat16; TensorFlow's own CPU kernels, which
    also serve float16 on CPU, reject dilation in the backward pass ("Current
    CPU implementations do not yet support dilation rates larger than 1").
    Probed once per dtype with a tiny gradient computation on the CPU.
    """
    if tf.config.list_physical_devices("GPU"):
        return True
    # The backward ops are called directly: init_scope (eager even while a
    # tf.function is traced) does not record gradients.
    with tf.init_scope(), tf.device("/cpu:0"):
        x = tf.ones((1, 5, 5, 1), dtype)
        kernel = tf.ones((3, 3, 1, 1), dtype)
        options = dict(strides=[1, 1, 1, 1], padding="SAME", dilations=[1, 2, 2, 1])
        try:
            y = tf.raw_ops.Conv2D(input=x, filter=kernel, **options)
            tf.raw_ops.Conv2DBackpropInput(input_sizes=[1, 5, 5, 1], filter=kernel,
                                           out_backprop=y, **options)
            tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[3, 3, 1, 1],
                                            out_backprop=y, **options)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError, tf.errors.AbortedError):
            # Aborted: oneDNN has no kernel of this dtype at all (bfloat16 below
            # AVX-512; `precision.py`), which entry points refuse before this.
            return False
    return True


def atrous_conv_implementation() -> str:
    """"native" or "taps": how stride-1 "same" atrous convs run (module doc);
    DEEPLABV3_ATROUS_CONV chooses, native by default."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() or "native"
    if chosen not in IMPLEMENTATIONS:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={chosen!r} is not one of {IMPLEMENTATIONS}.")
    return chosen


@tf.custom_gradient
def conv1x1_matmul_gradients(inputs, kernel):
    """A 1x1 conv whose gradients are computed as two matmuls.

    [B, H, W, C] x [1, 1, C, O]: dx = dy @ k^T, dk = x^T @ dy over the B*H*W
    positions. oneDNN's convolution filter gradient runs 1x1 convs at ~60% of
    its matmul speed on large feature maps (R101 training: 6-9% faster steps).
    """
    outputs = tf.nn.conv2d(inputs, kernel, 1, "VALID")

    def gradients(upstream):
        channels, filters = kernel.shape[2], kernel.shape[3]
        flat_x = tf.reshape(inputs, [-1, channels])
        flat_dy = tf.reshape(tf.cast(upstream, inputs.dtype), [-1, filters])
        matrix = tf.reshape(kernel, [channels, filters])
        d_inputs = tf.reshape(tf.matmul(flat_dy, matrix, transpose_b=True), tf.shape(inputs))
        d_kernel = tf.matmul(flat_x, flat_dy, transpose_a=True)[None, None]
        return d_inputs, d_kernel

    return outputs, gradients


def subsample(inputs, strides: tuple[int, int]):
    """`inputs[:, ::sh, ::sw, :]` of [B, H, W, C], as pad, reshape and slice.

    TensorFlow's CPU StridedSlice kernel (and its gradient) copies element by
    element: on the input of R101's first strided 1x1 conv in training
    (2 x 81 x 81 x 256, float32) slice and gradient took 6.4 ms where this takes
    1.9 (AMD EPYC). The padding (to a multiple of the stride, never read) and the
    slice copy whole channel vectors; their gradients are a slice and a pad.
    Sizes may be unknown while tracing.
    """
    sh, sw = strides
    if (sh, sw) == (1, 1):
        return inputs
    height, width = _static_or_dynamic(inputs, 1), _static_or_dynamic(inputs, 2)
    rows, columns = (height + sh - 1) // sh, (width + sw - 1) // sw
    if not (isinstance(height, int) and height % sh == 0
            and isinstance(width, int) and width % sw == 0):
        inputs = tf.pad(inputs, [[0, 0], [0, rows * sh - height],
                                 [0, columns * sw - width], [0, 0]])
    # 5-D at most (LiteRT's SLICE): batch and rows share an axis.
    batch, channels = _static_or_dynamic(inputs, 0), inputs.shape[3]
    blocks = tf.reshape(inputs, [-1, sh, columns, sw, channels])
    corners = tf.slice(blocks, [0, 0, 0, 0, 0], [-1, 1, -1, 1, -1])
    return tf.reshape(corners, [batch, rows, columns, channels])


def _static_or_dynamic(tensor, axis):
    """The size of `axis`: a Python int when known while tracing, else a tensor."""
    size = tensor.shape[axis]
    return size if size is not None else tf.shape(tensor)[axis]


def _tap_window(size, offset):
    """Output range [start, stop) whose input index (output + offset) is inside
    [0, size); Python ints when `size` is, else tensors (empty when stop == start)."""
    if isinstance(size, int):
        start = max(0, -offset)
        return start, max(min(size, size - offset), start)
    start = tf.maximum(0, -offset)
    return start, tf.maximum(tf.minimum(size, size - offset), start)


def _taps(inputs, kernel_shape, rate):
    """[(i, j, dy, dx, (y0, y1), (x0, x1))] of the kernel taps of a stride-1 "same"
    conv on `inputs`: tap (i, j) reads input (y + dy, x + dx) for outputs y in
    [y0, y1), x in [x0, x1). Taps whose window is known to be empty are left out."""
    height, width = _static_or_dynamic(inputs, 1), _static_or_dynamic(inputs, 2)
    kh, kw = kernel_shape[:2]
    taps = []
    for i in range(kh):
        dy = (i - (kh - 1) // 2) * rate[0]
        rows = _tap_window(height, dy)
        for j in range(kw):
            dx = (j - (kw - 1) // 2) * rate[1]
            columns = _tap_window(width, dx)
            if any(isinstance(lo, int) and isinstance(hi, int) and hi <= lo
                   for lo, hi in (rows, columns)):
                continue
            taps.append((i, j, dy, dx, rows, columns))
    return taps, height, width


def _place(values, rows, columns, offset, height, width):
    """`values` [B, h, w, C] computed for rows/columns (shifted by `offset`), zero-padded
    into [B, height, width, C]; returned as is when it already covers everything.
    An empty window (a tap in the padding, when the size is known only at run time)
    may lie beyond the map: its padding is clipped so that it still adds up."""
    pads = []
    for (lo, hi), shift, size in ((rows, offset[0], height), (columns, offset[1], width)):
        extent = hi - lo
        if isinstance(lo, int) and isinstance(size, int):
            before = min(max(lo + shift, 0), size - extent)
        else:
            before = tf.clip_by_value(lo + shift, 0, size - extent)
        pads.append((before, size - extent - before))
    if all(isinstance(v, int) and v == 0 for pad in pads for v in pad):
        return values
    return tf.pad(values, [[0, 0], pads[0], pads[1], [0, 0]])


def _filter_gradient_by_taps(inputs, upstream, kernel_shape, rate):
    """dW [kh, kw, C, O] of a stride-1 "same" atrous conv, tap by tap:
    dW[i, j] = x_shifted^T @ dy over the outputs where tap (i, j) lands inside."""
    kh, kw, channels, filters = kernel_shape
    taps, _, _ = _taps(inputs, kernel_shape, rate)
    found = {}
    for i, j, dy, dx, (y0, y1), (x0, x1) in taps:
        patch = tf.reshape(inputs[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx, :], [-1, channels])
        grad = tf.reshape(upstream[:, y0:y1, x0:x1, :], [-1, filters])
        found[i, j] = tf.matmul(patch, grad, transpose_a=True)
    zeros = tf.zeros([channels, filters], inputs.dtype)
    return tf.stack([tf.stack([found.get((i, j), zeros) for j in range(kw)])
                     for i in range(kh)])


def _sum_of_tap_matmuls(values, kernel, like, rate, backward: bool):
    """Sum over the taps of `values` shifted, times the tap's matrix, placed in a map
    the size of `like` (module doc).

    Forward (`values` the input x): y[p] = sum_t x[p + offset_t] @ W_t.
    Backward (`values` the output gradient dy): dx[p + offset_t] += dy[p] @ W_t^T.
    """
    taps, height, width = _taps(like, kernel.shape, rate)
    batch = tf.shape(values)[0]
    channels = kernel.shape[3] if backward else kernel.shape[2]  # of `values`
    filters = kernel.shape[2] if backward else kernel.shape[3]  # of the result
    parts = []
    for i, j, dy, dx, (y0, y1), (x0, x1) in taps:
        read, write = ((0, 0), (dy, dx)) if backward else ((dy, dx), (0, 0))
        window = values[:, y0 + read[0]:y1 + read[0], x0 + read[1]:x1 + read[1], :]
        part = tf.matmul(tf.reshape(window, [-1, channels]), kernel[i, j],
                         transpose_b=backward)
        part = tf.reshape(part, [batch, y1 - y0, x1 - x0, filters])
        parts.append(_place(part, (y0, y1), (x0, x1), write, height, width))
    return tf.add_n(parts)


def atrous_conv(inputs, kernel, rate: tuple[int, int], implementation: str = "native",
                training: bool = False):
    """A stride-1 "same" conv of `inputs` [B, H, W, C] with `kernel` [kh, kw, C, O]
    (odd kh, kw) at dilation `rate`, computed by `implementation` ("native" or
    "taps", module doc). With `training`, the filter gradient is computed by taps
    either way (and, for "taps", the input gradient too)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: choose 'native' or 'taps'.")
    options = dict(strides=[1, 1, 1, 1], padding="SAME", dilations=[1, *rate, 1])

    def forward(inputs, kernel):
        if implementation == "taps":
            return _sum_of_tap_matmuls(inputs, kernel, inputs, rate, backward=False)
        return tf.raw_ops.Conv2D(input=inputs, filter=kernel, **options)

    if not training:
        return forward(inputs, kernel)

    @tf.custom_gradient
    def conv(inputs, kernel):
        def gradients(upstream):
            # The input slices below depend on the forward input only: without
            # this dependency the executor cuts them out during the forward
            # pass and holds them (up to 9 slices of the input) until the backward.
            with tf.control_dependencies([upstream]):
                upstream = tf.cast(upstream, inputs.dtype)
                if implementation == "taps":
                    d_inputs = _sum_of_tap_matmuls(upstream, kernel, inputs, rate,
                                                   backward=True)
                else:
                    d_inputs = tf.raw_ops.Conv2DBackpropInput(
                        input_sizes=tf.shape(inputs), filter=kernel, out_backprop=upstream,
                        **options)
                d_kernel = _filter_gradient_by_taps(inputs, upstream, kernel.shape, rate)
                return d_inputs, d_kernel

        return forward(inputs, kernel), gradients

    return conv(inputs, kernel)

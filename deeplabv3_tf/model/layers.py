"""Small layers the DeepLabv3 graph needs beyond core Keras.

All are registered for `.keras` serialisation under the package name
"deeplabv3_tf", so saved models reload with `keras.saving.load_model` once
this module is imported.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from deeplabv3_tf.config import NORMALIZATIONS

# The ImageNet mean of the Caffe ResNets (keras.applications), RGB order,
# pixels in [0, 255]. Also the value padded images are filled with.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
# torchvision's and TF Model Garden's statistics, RGB order, pixels in [0, 1].
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class InputNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what the backbone weights expect.

    Computed in float32 whatever the global policy: it is cheap and the mean
    subtraction loses precision in float16 for no gain.

    Args:
      mode: One of `deeplabv3_tf.config.NORMALIZATIONS`:
        "caffe" flips RGB to BGR and subtracts the BGR mean (keras.applications
        ResNets); "imagenet" scales to [0, 1], subtracts the RGB mean and
        divides by the std, in that order (torchvision's ToTensor + Normalize);
        "inception" scales to [-1, 1].

    Input: float [B, H, W, 3] RGB in [0, 255]. Output: float32 [B, H, W, 3].
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"mode={mode!r} is not one of {NORMALIZATIONS}.")
        self.mode = mode

    def call(self, images):
        images = tf.cast(images, tf.float32)
        if self.mode == "caffe":
            return images[..., ::-1] - tf.constant(IMAGENET_MEAN_RGB[::-1])
        if self.mode == "imagenet":
            return ((images / 255.0 - tf.constant(TORCHVISION_MEAN_RGB))
                    / tf.constant(TORCHVISION_STD_RGB))
        return images / 127.5 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class ResizeLike(keras.layers.Layer):
    """Bilinearly resizes `inputs[0]` to the spatial size of `inputs[1]`.

    Always float32: under mixed precision the upsampled logits and the ASPP
    pooling branch keep full precision (as TF Model Garden resizes in float32).
    Uses `tf.image.resize` (half-pixel centres) because its size may be a
    dynamic tensor inside `tf.function`, which `keras.ops.image.resize` does
    not accept.

    Inputs: [x float [B, h, w, C], reference [B, H, W, ...]].
    Output: float32 [B, H, W, C].
    """

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        return tf.image.resize(tf.cast(x, tf.float32), size, method="bilinear")

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


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
                tf.errors.NotFoundError):
            return False
    return True


@tf.custom_gradient
def _conv1x1_matmul_gradients(inputs, kernel):
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


def _shifted_windows(size, offset):
    """Output range [start, stop) whose input index (output + offset) is inside [0, size)."""
    start = tf.maximum(0, -offset)
    stop = tf.maximum(tf.minimum(size, size - offset), start)
    return start, stop


def _atrous_conv_tap_gradients(rate: tuple[int, int]):
    """A stride-1 "same" atrous conv whose filter gradient is computed tap by tap.

    dW[i, j] = x_shifted^T @ dy over the output positions where tap (i, j)
    lands inside the input: the taps that only ever see padding cost nothing.
    oneDNN's filter gradient computes every tap: for ASPP at output stride 16
    on a 321x321 crop (21x21 features, rates 6/12/18) it takes 140 ms a step
    in float32 where this takes 42. The input gradient stays the native op.
    """

    @tf.custom_gradient
    def conv(inputs, kernel):
        options = dict(strides=[1, 1, 1, 1], padding="SAME", dilations=[1, *rate, 1])
        outputs = tf.raw_ops.Conv2D(input=inputs, filter=kernel, **options)

        def gradients(upstream):
            # The input slices below depend on the forward input only: without
            # this dependency the executor cuts them out during the forward
            # pass and holds them (up to 9 slices of the input) until the backward.
            with tf.control_dependencies([upstream]):
                upstream = tf.cast(upstream, inputs.dtype)
                d_inputs = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(inputs), filter=kernel, out_backprop=upstream,
                    **options)
                height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
                kh, kw, channels, filters = kernel.shape
                rows = []
                for i in range(kh):
                    dy_ = (i - (kh - 1) // 2) * rate[0]
                    y0, y1 = _shifted_windows(height, dy_)
                    columns = []
                    for j in range(kw):
                        dx_ = (j - (kw - 1) // 2) * rate[1]
                        x0, x1 = _shifted_windows(width, dx_)
                        patch = tf.reshape(inputs[:, y0 + dy_:y1 + dy_, x0 + dx_:x1 + dx_, :],
                                           [-1, channels])
                        grad = tf.reshape(upstream[:, y0:y1, x0:x1, :], [-1, filters])
                        columns.append(tf.matmul(patch, grad, transpose_a=True))
                    rows.append(tf.stack(columns))
                return d_inputs, tf.stack(rows)

        return outputs, gradients

    return conv


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class AtrousConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose atrous convolution runs as one native op.

    In training (`training=True`), filter gradients are computed faster than
    oneDNN does for two kinds of convs: 1x1 convs (as matmuls; strided ones
    subsample first) and atrous convs (tap by tap, skipping the padding).

    Keras lowers a dilated conv through `tf.nn.convolution`, which rewrites it
    as SpaceToBatchND -> Conv2D -> BatchToSpaceND: the feature map is padded to
    a multiple of the rate and every tap of every padded position is computed.
    oneDNN and cuDNN run dilated convolutions directly and skip what falls
    into the padding; on 2 CPU cores at output stride 16 (33x33 features at
    513x513) ASPP's rate-18 conv takes 12 ms instead of 74, the rate-6 conv
    20 instead of 36. Same variables as Conv2D, so checkpoints are unchanged.
    Where the native kernel is missing (`native_dilated_conv_supported`), it
    falls back to Keras' lowering.
    """

    def call(self, inputs, training=None):
        # Read by convolution_op: in training, 1x1 convs take their gradients as matmuls.
        self._in_training = bool(training)
        return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        if self.kernel_size == (1, 1):
            # A strided 1x1 conv is a 1x1 conv of the subsampled input. oneDNN's
            # filter gradient of the strided form runs at a quarter of the speed.
            sh, sw = self.strides
            if max(self.strides) > 1:
                inputs = inputs[:, ::sh, ::sw, :]
            kernel = tf.cast(kernel, inputs.dtype)
            if getattr(self, "_in_training", False):
                return _conv1x1_matmul_gradients(inputs, kernel)
            return tf.nn.conv2d(inputs, kernel, 1, "VALID")
        if (max(self.dilation_rate) == 1
                or not native_dilated_conv_supported(tf.as_dtype(inputs.dtype).name)):
            return super().convolution_op(inputs, kernel)
        kernel = tf.cast(kernel, inputs.dtype)
        if (getattr(self, "_in_training", False) and self.padding == "same"
                and max(self.strides) == 1 and all(k % 2 for k in self.kernel_size)):
            return _atrous_conv_tap_gradients(self.dilation_rate)(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, strides=self.strides,
                            padding=self.padding.upper(), dilations=self.dilation_rate)


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Keras 3 computes BatchNorm from separate ops (mean, squared difference,
    mean, then scale and shift; their gradients likewise) and upcasts
    bfloat16/float16 activations to float32 around them. `FusedBatchNormV3`
    (oneDNN on CPU, cuDNN on GPU) does the statistics, the normalisation and
    the gradient in one pass each, in the activations' dtype with float32
    statistics. Same variables, same update of the moving statistics (biased
    batch variance, as Keras). Falls back to Keras' computation for what the
    fused kernel does not do: masks, cross-replica (`synchronized`) statistics,
    renormalisation, an axis other than the last, inputs that are not 4-D.
    """

    def call(self, inputs, training=None, mask=None):
        if (mask is not None or self.synchronized or self.renorm
                or len(inputs.shape) != 4 or self.axis not in (3, -1)
                or not (self.scale and self.center)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float32, tf.float16, tf.bfloat16):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=True)
            # The kernel returns the unbiased variance; Keras averages the biased one.
            shape = tf.shape(x)
            count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)

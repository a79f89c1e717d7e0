"""Small layers the DeepLabv3 graph needs beyond core Keras.

All are registered for `.keras` serialisation under the package name
"deeplabv3_tf", so saved models reload with `keras.saving.load_model` once
this module is imported.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplabv3_tf.data.dataset import IMAGENET_MEAN_RGB
from deeplabv3_tf.model.conv_kernels import (atrous_conv, atrous_conv_implementation,
                                             conv1x1_matmul_gradients,
                                             native_dilated_conv_supported, subsample)

# torchvision's and TF Model Garden's statistics, RGB order, pixels in [0, 1].
# Input normalisations the model can apply to float pixels in [0, 255].
#   caffe:    RGB->BGR, subtract the ImageNet BGR mean (keras.applications ResNets).
#   imagenet: RGB scaled to [0, 1], minus the ImageNet mean (0.485, 0.456, 0.406),
#             divided by the std (0.229, 0.224, 0.225) (torchvision, TF Model Garden).
#   inception: scale to [-1, 1].
NORMALIZATIONS = ("caffe", "imagenet", "inception")
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class InputNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what the backbone weights expect.

    Computed in float32 whatever the global policy: it is cheap and the mean
    subtraction loses precision in float16 for no gain.

    Args:
      mode: One of `NORMALIZATIONS`:
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
            # RGB -> BGR. tf.reverse copies pixels; a [..., ::-1] slice (StridedSlice)
            # copies element by element, 4x slower (7.8 against 1.8 ms at 513x513).
            return tf.reverse(images, [-1]) - tf.constant(IMAGENET_MEAN_RGB[::-1])
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


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class ResidualAdd(keras.layers.Add):
    """`keras.layers.Add` as one `AddN` op, which oneDNN fuses into the conv before it.

    Grappler fuses conv + bias + add + ReLU into one oneDNN convolution (the add as
    a "sum" post-op) when the add is an AddN, or an AddV2 whose inputs it can
    prove to have the same shape. Keras' Add is an AddV2: in a graph traced with
    unknown image sizes (every exported signature) the proof fails and the 33
    residual adds and ReLUs of an R101 run as separate ops over whole feature
    maps (bfloat16 multi-scale + flip: 7.6 s against 7.1 s traced at a known
    size, on the AMD EPYC). AddN needs no proof: its inputs have one shape by
    definition. So the add is an AddN where the feature map's size is unknown,
    and stays Keras' AddV2 where it is known (grappler proves it there, and
    LiteRT quantises ADD to int8 but has no int8 ADD_N). Same function, no
    weights.
    """

    def _merge_function(self, inputs):
        if all(None not in tuple(x.shape)[1:] for x in inputs):
            return super()._merge_function(inputs)
        return tf.add_n(list(inputs))


@keras.saving.register_keras_serializable(package="deeplabv3_tf")
class AtrousConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose atrous convolution runs as one native op.

    Stride-1 "same" atrous convs run natively, or as one matmul per kernel tap
    with DEEPLABV3_ATROUS_CONV=taps (`conv_kernels.atrous_conv`). In training
    (`training=True`), filter gradients are computed faster than oneDNN does
    for two kinds of convs: 1x1 convs (as matmuls; strided ones subsample
    first) and atrous convs (tap by tap, skipping the padding).

    Keras lowers a dilated conv through `tf.nn.convolution`, which rewrites it
    as SpaceToBatchND -> Conv2D -> BatchToSpaceND: the feature map is padded to
    a multiple of the rate and every tap of every padded position is computed.
    oneDNN and cuDNN run dilated convolutions directly and skip what falls
    into the padding; on 2 CPU cores at output stride 16 (33x33 features at
    513x513) ASPP's rate-18 conv takes 12 ms instead of 74, the rate-6 conv
    20 instead of 36. Same variables as Conv2D, so checkpoints are unchanged.
    Where the native kernel is missing (`native_dilated_conv_supported`: no
    oneDNN, as on ARM or with TF_ENABLE_ONEDNN_OPTS=0), it falls back to
    Keras' lowering, unless taps are asked for (they need no dilated kernel).
    """

    def call(self, inputs, training=None):
        # Read by convolution_op: in training, 1x1 convs take their gradients as matmuls.
        self._in_training = bool(training)
        return super().call(inputs)

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        training = getattr(self, "_in_training", False)
        if self.kernel_size == (1, 1):
            # A strided 1x1 conv is a 1x1 conv of the subsampled input. oneDNN's
            # filter gradient of the strided form runs at a quarter of the speed.
            inputs = subsample(inputs, self.strides)
            kernel = tf.cast(kernel, inputs.dtype)
            if training:
                return conv1x1_matmul_gradients(inputs, kernel)
            return tf.nn.conv2d(inputs, kernel, 1, "VALID")
        if max(self.dilation_rate) == 1:
            return super().convolution_op(inputs, kernel)
        native = native_dilated_conv_supported(tf.as_dtype(inputs.dtype).name)
        kernel = tf.cast(kernel, inputs.dtype)
        if (self.padding == "same" and max(self.strides) == 1
                and all(k % 2 for k in self.kernel_size)):
            implementation = atrous_conv_implementation()
            # Taps are matmuls: they need no native dilated kernel.
            if native or implementation == "taps":
                return atrous_conv(inputs, kernel, self.dilation_rate, implementation, training)
        if not native:
            return super().convolution_op(inputs, kernel)
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

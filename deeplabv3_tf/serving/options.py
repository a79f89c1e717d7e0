"""The options an export is made with (`tools/export.py`'s flags), and their defaults."""

from __future__ import annotations

import dataclasses

from deeplabv3_tf.core.precision import INFERENCE_PRECISIONS
from deeplabv3_tf.evaluation.inference import Windows

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
IMAGE_SIGNATURES = ("serving_default", "multiscale_flip", "encoded_image", "tf_example")
# 2048 x 2048: one image of this size adds 1.1 GB to a served R101 at output
# stride 16 (2.3 GB in all), 1.9 GB at stride 8 (3.1 GB in all), on CPU
# (docs/serving.md, bench/serving_memory.py).
DEFAULT_MAX_PIXELS = 2048 * 2048
# 4096 x 4096 for a windowed export: the network's memory is that of a batch
# of windows whatever the image; what grows with the image is its decoded and
# float copies and the answer (about 40 bytes a pixel) and one row of windows'
# accumulator (window height x width x classes x 4 bytes). Measured by
# bench/serving_memory.py (docs/evaluation.md, "Large images").
DEFAULT_WINDOWED_MAX_PIXELS = 4096 * 4096


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What the exported graph does beyond the trained model.

    Attributes:
      output_stride: Inference output stride (None: the training one).
      scales: Scales of the multiscale_flip signature.
      flip: Left-right flip in multiscale_flip.
      with_probabilities: Add `probabilities` to serving_default and
        multiscale_flip (off by default: 513x513x21 float32 is 22 MB per image,
        above gRPC's default 4 MB message limit).
      max_side: Resize images whose longest side exceeds this inside the graph
        (masks still come back at the original size); 0 = never.
      max_pixels: Pixels one image may have (GIF: x frames); larger images are
        refused with INVALID_ARGUMENT before they are decoded. 0 = no limit;
        None: DEFAULT_MAX_PIXELS, or DEFAULT_WINDOWED_MAX_PIXELS with `window`.
      max_request_pixels: Pixels one request may hold (dense: B x H x W;
        encoded: the padded answer B x Hmax x Wmax). None: `max_pixels`;
        0 = no limit.
      server_batching: For TF Serving's server-side batching: no check that
        depends on other requests of a merged batch refuses it (module doc).
      fold_batch_norm: Fold every BatchNorm into its conv (`model.fold`):
        the same function with fewer ops. In float32 on CPU grappler already
        fuses the (fused) BatchNorm into the conv, so speed is unchanged; the
        bfloat16 graph needs it (Keras' BatchNorm computes in float32).
      precision: "float32", or "bfloat16" where the CPU has bfloat16 kernels
        (`precision.check_precision`) and they pay: AMX (several times
        float32's speed), AVX512_BF16 on the AMD EPYC (about twice); not an
        Intel Xeon without AMX, where bfloat16 runs slower than float32.
        Masks agree with float32 on >= 99.5% of pixels. Probabilities stay
        float32 either way.
      window: Segment images by sliding windows (`inference.Windows`) in every
        image signature; images no larger than the window run whole.
    """

    output_stride: int | None = None
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    with_probabilities: bool = False
    max_side: int = 0
    max_pixels: int | None = None
    max_request_pixels: int | None = None
    server_batching: bool = False
    fold_batch_norm: bool = True
    precision: str = "float32"
    window: Windows | None = None

    def __post_init__(self):
        if isinstance(self.window, dict):  # from export_config.json
            object.__setattr__(self, "window", Windows(**self.window))
        if self.max_pixels is None:
            object.__setattr__(self, "max_pixels", DEFAULT_WINDOWED_MAX_PIXELS if self.window
                               else DEFAULT_MAX_PIXELS)
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of "
                             f"{INFERENCE_PRECISIONS}.")
        if self.precision != "float32" and not self.fold_batch_norm:
            raise ValueError("precision='bfloat16' exports the folded graph; "
                             "leave fold_batch_norm on.")
        for name in ("max_side", "max_pixels", "max_request_pixels"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value}: give a positive number, or 0 for no limit.")

    @property
    def request_pixels(self) -> int:
        """The per-request budget in effect (0: none)."""
        if self.server_batching:
            return 0
        return self.max_pixels if self.max_request_pixels is None else self.max_request_pixels

"""Writes a torchvision model with random, non-trivial weights and its outputs.

  python torchvision_reference.py SOURCE ARCH SEED OUT_DIR HxW [HxW ...]
  python torchvision_reference.py check ARCH OUT_DIR

SOURCE is `torchvision` (the model from torchvision itself) or `replica`
(`torch_replica.py`: the same architecture and state_dict names, torch only).
Writes OUT_DIR/ARCH.pth (the state_dict) and OUT_DIR/ARCH.npz (for each size,
the input pixels, float32 [1, H, W, 3] RGB in [0, 255], and the model's
outputs, NHWC). `check` loads OUT_DIR/ARCH.pth into torchvision's model
(strict: every name and shape must match), runs it on the stored inputs and
prints the largest absolute difference from the stored outputs.

Run in its own process: importing torchvision after TensorFlow in one process
crashes (torch 2.14.1 / torchvision 0.29.1 / TF 2.21). Only torch,
torchvision (when asked for) and NumPy are imported here.

Weights: BN scales and shifts drawn at random, BN statistics measured on the
images the outputs are computed for and then perturbed, so that activations
stay O(1) through the network while a wrongly mapped or transposed entry, a BN
parameter in the wrong slot, another padding or dilation schedule, or another
input normalisation all move the outputs far beyond the tolerance.
"""

import os
import sys

import numpy as np
import torch

import torch_replica

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def build(source: str, arch: str):
    if source == "replica":
        return torch_replica.build(arch)
    if source != "torchvision":
        raise ValueError(f"SOURCE must be torchvision or replica, not {source!r}")
    import torchvision

    if arch.startswith("deeplabv3_"):
        return getattr(torchvision.models.segmentation, arch)(
            weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    return getattr(torchvision.models, arch)(weights=None)


def to_torch(images: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor + Normalize of float [B, H, W, 3] pixels in [0, 255]."""
    return torch.from_numpy(((images / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def randomize(model, seed: int, calibration: list[np.ndarray]):
    """Random BN scales and shifts; BN statistics measured on the image batches
    (BN in training mode, averaged over the batches), then perturbed."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.normal_(0.0, 0.2, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batches
        model.eval()
        for norm in norms:
            norm.train()
        for images in calibration:
            model(to_torch(images))
        for norm in norms:
            norm.running_mean.add_(0.1 * torch.randn(norm.num_features, generator=generator))
            norm.running_var.mul_(
                torch.empty(norm.num_features).uniform_(0.8, 1.25, generator=generator))
    return model.eval()


def pixels(height: int, width: int, seed: int) -> np.ndarray:
    """float32 [1, H, W, 3] whole-valued RGB in [0, 255]: random waves plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 40.0
    frequency = rng.uniform(0.3, 2.0, (3, 2))
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([np.sin(f[0] * x + f[1] * y + p) for f, p in zip(frequency, phase)], -1)
    image = rng.uniform(60, 190, 3) + 80 * base + rng.normal(0, 25, (height, width, 3))
    return np.round(np.clip(image, 0, 255)).astype(np.float32)[None]


def outputs_nhwc(model, images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(to_torch(images))
    outputs = out if isinstance(out, dict) else {"out": out}
    return {key: value.numpy().transpose(0, 2, 3, 1) if value.ndim == 4 else value.numpy()
            for key, value in outputs.items()}


def check(arch: str, out_dir: str) -> None:
    model = build("torchvision", arch)
    model.load_state_dict(torch.load(os.path.join(out_dir, f"{arch}.pth")), strict=True)
    model.eval()
    arrays = np.load(os.path.join(out_dir, f"{arch}.npz"))
    difference = 0.0
    for key in arrays.files:
        size, name = key.split("/")
        if name == "images":
            for output, value in outputs_nhwc(model, arrays[key]).items():
                difference = max(difference, float(np.abs(value - arrays[f"{size}/{output}"]).max()))
    print(f"max_abs_difference {difference:.3g}")


def main(source: str, arch: str, seed: str, out_dir: str, *sizes: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(int(seed))
    images, calibration = {}, []
    for size in sizes:
        height, width = (int(v) for v in size.split("x"))
        images[size] = pixels(height, width, seed=height * width + int(seed))
        # Batches of several images: the ASPP image-pooling BN sees one value per image.
        calibration.append(np.concatenate(
            [images[size]] + [pixels(height, width, seed=int(seed) + 1000 * i) for i in range(1, 4)]))
    model = randomize(build(source, arch), int(seed) + 1, calibration)
    torch.save(model.state_dict(), os.path.join(out_dir, f"{arch}.pth"))
    arrays = {}
    for size, batch in images.items():
        arrays[f"{size}/images"] = batch
        for key, value in outputs_nhwc(model, batch).items():
            arrays[f"{size}/{key}"] = value
    np.savez(os.path.join(out_dir, f"{arch}.npz"), **arrays)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        torch.set_num_threads(2)
        check(*sys.argv[2:])
    else:
        main(*sys.argv[1:])

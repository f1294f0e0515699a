"""Training data: scikit-learn's bundled digits or an image folder, resized to the model's input.

Both sources give float images in [0, 1] (the book's ``Rescaling(1./255)``), shaped (C, H, W)
with C = 1 (grayscale) or 3 (RGB), and integer class labels. The train/validation split is
stratified and fixed (it does not follow ``--seed``), so runs with different seeds see the same
validation images.
"""
import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

# The split's own seed: fixed, independent of the training seed.
SPLIT_SEED = 20240607
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_LEVELS = 16.0  # scikit-learn's digits hold integers 0..16


@dataclass(frozen=True)
class Splits:
    """A train and a validation dataset with their class names."""

    train: Dataset
    val: Dataset
    classes: Tuple[str, ...]
    source: str  # "digits" or the image folder's absolute path, recorded in checkpoints


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int = SPLIT_SEED) -> Tuple[List[int], List[int]]:
    """(train indices, validation indices): ``round(val_fraction * n_c)`` of each class to validation.

    Every class keeps at least one training sample; the indices of each part are sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"Invalid value for argument `val_fraction`. Expected a float in (0, 1). "
            f"Received val_fraction={val_fraction!r}."
        )
    generator = torch.Generator().manual_seed(seed)
    by_class = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = min(round(val_fraction * len(members)), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def stratified_subset(labels: Sequence[int], fraction: float, seed: int = SPLIT_SEED) -> List[int]:
    """Positions of a class-balanced ``fraction`` of ``labels`` (at least one per class); fixed by ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"Invalid value for argument `train_fraction`. Expected a float in (0, 1]. "
            f"Received train_fraction={fraction!r}."
        )
    if fraction == 1.0:
        return list(range(len(labels)))
    kept, _ = stratified_split(labels, 1.0 - fraction, seed + 1)
    return kept


class TensorImages(Dataset):
    """Small images held in memory, resized one at a time to (H, W) on access."""

    def __init__(self, images: Tensor, labels: Tensor, size: Tuple[int, int], channels: int) -> None:
        self.images, self.labels, self.size, self.channels = images, labels, tuple(size), channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        image = self.images[index]  # (1, h, w) in [0, 1]
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return image.expand(self.channels, -1, -1).contiguous(), int(self.labels[index])


class ImageFiles(Dataset):
    """Image files read with PIL, converted to ``channels`` channels and resized to (H, W)."""

    def __init__(self, samples: Sequence[Tuple[str, int]], size: Tuple[int, int], channels: int) -> None:
        self.samples, self.size, self.channels = list(samples), tuple(size), channels

    @property
    def labels(self) -> List[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.size[0], self.size[1], self.channels).permute(2, 0, 1)
        return pixels.float().div_(255.0), label


class Subset(Dataset):
    """``dataset`` restricted to ``indices``, keeping ``labels`` for stratification."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        labels = dataset.labels
        self.labels = [int(labels[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def digits(size: Tuple[int, int], channels: int, val_fraction: float = 0.2) -> Splits:
    """scikit-learn's 1,797 handwritten 8×8 digits (shipped with scikit-learn: no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('--dataset digits needs scikit-learn: pip install "torchblocks[train]"') from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / DIGITS_LEVELS
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    full = TensorImages(images, labels, size, channels)
    train, val = stratified_split(labels.tolist(), val_fraction)
    return Splits(Subset(full, train), Subset(full, val), tuple(str(c) for c in range(10)), "digits")


def image_folder(root: str, size: Tuple[int, int], channels: int, val_fraction: float = 0.2) -> Splits:
    """Images in ``root/<class>/<image>`` (torchvision ``ImageFolder`` layout), checked up front.

    Raises ``FileNotFoundError``/``ValueError`` naming the folder or file for a missing or empty
    folder, a class folder without images, and any file PIL cannot identify as an image.
    """
    from PIL import Image

    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist or is not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"data folder {root!r} holds no class folders; expected {root}/<class>/<image>")
    if len(classes) < 2:
        raise ValueError(f"data folder {root!r} holds one class folder ({classes[0]!r}); expected at least two")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(
            os.path.join(dirpath, file)
            for dirpath, _, files in os.walk(folder, followlinks=True)
            for file in files
            if file.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise ValueError(
                f"class folder {folder!r} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(path, label) for path in files]
    for path, _ in samples:
        # Opening reads only the header: a cheap check that turns a bad file into an error before
        # training starts rather than in the middle of an epoch.
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
    full = ImageFiles(samples, size, channels)
    train, val = stratified_split(full.labels, val_fraction)
    return Splits(Subset(full, train), Subset(full, val), tuple(classes), os.path.abspath(root))

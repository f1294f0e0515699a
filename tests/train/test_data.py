"""``torchblocks.train.data``: stratified splits, the bundled digits, image folders."""
import numpy as np
import torch
import torch.nn.functional as F

from tiny_models import CLASSES, PER_CLASS
from torchblocks.train import digits, image_folder, stratified_split, stratified_subset


def test_stratified_split_keeps_class_shares_and_is_fixed():
    labels = [0] * 50 + [1] * 30 + [2] * 7
    train_idx, val_idx = stratified_split(labels, 0.2)
    assert sorted(train_idx + val_idx) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val_idx) for c in range(3)] == [10, 6, 1]  # round(0.2 * n_c)
    assert stratified_split(labels, 0.2) == (train_idx, val_idx)
    kept = stratified_subset([labels[i] for i in train_idx], 0.1)
    assert [sum(labels[train_idx[i]] == c for i in kept) for c in range(3)] == [4, 2, 1]  # >= 1 per class


def test_digits_are_the_bundled_images_split_and_resized():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    splits = digits((8, 8), 3)
    assert len(splits.train) + len(splits.val) == 1797 and splits.classes == tuple("0123456789")
    counts = np.bincount(bunch.target)
    assert len(splits.val) == sum(round(0.2 * n) for n in counts)
    image, label = splits.val[5]
    index = splits.val.indices[5]
    # At 8x8 the pixels are sklearn's, scaled by 1/16, in every channel.
    expected = torch.as_tensor(bunch.images[index], dtype=torch.float32) / 16
    assert label == bunch.target[index] and image.shape == (3, 8, 8)
    assert all(torch.equal(image[c], expected) for c in range(3))
    resized, _ = digits((20, 24), 1).val[5]
    torch.testing.assert_close(resized, F.interpolate(expected[None, None], size=(20, 24), mode="bilinear")[0])


def test_image_folder_reads_classes_in_order_and_resizes(folder):
    splits = image_folder(folder, (6, 7), 1)
    assert splits.classes == CLASSES and len(splits.train) + len(splits.val) == 3 * PER_CLASS
    image, label = splits.train[0]
    assert image.shape == (1, 6, 7) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    brightness = [float(splits.train[i][0].mean()) for i in range(len(splits.train))]
    labels = splits.train.labels
    assert min(b for b, l in zip(brightness, labels) if l == 2) > max(b for b, l in zip(brightness, labels) if l == 0)

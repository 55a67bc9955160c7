"""Generated few-shot image data for the tests (never the real Omniglot): tiny folders of PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_images(rng: np.random.Generator, n: int, size: int = 28, noise: float = 0.05) -> list[np.ndarray]:
    """``n`` noisy copies of one random 7×7 binary pattern scaled to ``size``: dark ink on white paper."""
    pattern = rng.random((7, 7)) < 0.4
    big = np.kron(pattern, np.ones((size // 7, size // 7), dtype=bool))
    out = []
    for _ in range(n):
        flip = rng.random(big.shape) < noise
        out.append(np.where(big ^ flip, 0, 255).astype(np.uint8))
    return out


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def make_omniglot(root: Path, drawers: int = 4, seed: int = 0, characters: int = 3) -> Path:
    """A mini Omniglot: 2 background alphabets × ``characters``, 1 evaluation alphabet × ``characters``,
    Vinyals split files (the evaluation alphabet is the test split), and 2 Lake runs of 3 classes (ragged
    20-way runs are not needed to test the parsing)."""
    rng = np.random.default_rng(seed)
    layout = {"images_background": ["Alpha", "Beta"], "images_evaluation": ["Gamma"]}
    names = []
    for half, alphabets in layout.items():
        for alphabet in alphabets:
            for c in range(1, characters + 1):
                for d, image in enumerate(class_images(rng, drawers), start=1):
                    write_png(root / half / alphabet / f"character{c:02d}" / f"{c:04d}_{d:02d}.png", image)
                names.append(f"{alphabet}/character{c:02d}")
    split_dir = root / "splits" / "vinyals"
    split_dir.mkdir(parents=True)
    rots = ("rot000", "rot090", "rot180", "rot270")
    train = 2 * characters  # the two background alphabets
    (split_dir / "train.txt").write_text("".join(f"{n}/{r}\n" for n in names[:train] for r in rots))
    (split_dir / "test.txt").write_text("".join(f"{n}/{r}\n" for n in names[train:] for r in rots))
    for run in ("run01", "run02"):
        labels = []
        for c in range(1, 4):
            train_img, test_img = class_images(rng, 2)
            write_png(root / "all_runs" / run / "training" / f"class{c:02d}.png", train_img)
            write_png(root / "all_runs" / run / "test" / f"item{4 - c:02d}.png", test_img)
            labels.append(f"{run}/test/item{4 - c:02d}.png {run}/training/class{c:02d}.png")
        # item(4-c) belongs to class c: the episode's query order must follow the classes, not the items
        (root / "all_runs" / run / "class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def make_image_folder(root: Path, train_classes: int = 8, test_classes: int = 5, per_class: int = 8) -> Path:
    """``root/{train,test}/<class>/<i>.png`` with easy classes (distinct patterns, 5% pixel noise)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", train_classes), ("test", test_classes)):
        for c in range(n):
            for i, image in enumerate(class_images(rng, per_class)):
                write_png(root / split / f"class{c:02d}" / f"{i}.png", image)
    return root

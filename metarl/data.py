"""Supervised few-shot data: class-indexed data sets, N-way K-shot episodes, sinusoid tasks.

An *episode* (a task of supervised meta-learning) is ``N`` classes of a split, ``K`` labelled *support*
examples and ``Q`` *query* examples of each. Following the core contract (``metarl.core``), an episode is a
frozen, JSON-serialisable :class:`envs.base.Task` that names only class ids and example indices; the images
are gathered into typed batches (:class:`FewShotBatch`) by :func:`collate`, all episodes of a meta-batch at
once (``[tasks, N·K, C, H, W]``). Labels are the position of the class in the episode (``0..N−1``), so a
learner never sees the data set's class ids.

Data sets (all :class:`ClassDataset`: a ``uint8`` image tensor plus the example indices of each class):

- :func:`load_omniglot` — Lake et al. (2015) Omniglot in the layout of the official zips
  (``images_background/<Alphabet>/<characterNN>/*.png``, ``images_evaluation/…``), resized to 28×28 with
  PIL (Lanczos) and inverted (strokes = 1), each rotation by 90°/180°/270° a new class (Santoro et al. 2016,
  Vinyals et al. 2016). Splits: ``"vinyals"`` (the list files ``splits/vinyals/{train,val,test}.txt``:
  1028/172/423 characters × 4 rotations), ``"maml"`` (Finn et al. 2017: 1200 characters of both halves,
  shuffled with seed 1, for training, the other 423 for test) and ``"lake"`` (train on
  ``images_background`` only; test on Lake's twenty 20-way one-shot ``all_runs``; ``within_alphabet``
  draws each training episode's classes from one alphabet, as the runs are). Decoded images are
  cached as ``.npz`` in a user-writable cache directory, so later runs load in a second.
- :func:`load_image_folder` — your own data: ``root/<split>/<class>/<image>`` (``train``/``test``).
- :class:`SinusoidSampler` — MAML §5.1 regression tasks: ``y = A·sin(x − φ)``, ``A ~ U[0.1, 5]``,
  ``φ ~ U[0, π]``, ``x ~ U[−5, 5]``.

Missing data raises :class:`metarl.errors.ConfigError` with one line naming the expected layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from envs.base import Task, split_rng
from metarl import atomic
from metarl.core import TaskSampler
from metarl.errors import ConfigError

OMNIGLOT_LAYOUT = (
    "<root>/images_background/<Alphabet>/<characterNN>/*.png and <root>/images_evaluation/… "
    "(the official Omniglot zips unpacked), plus splits/vinyals/*.txt for split='vinyals' and "
    "all_runs/runNN/ for split='lake'"
)
IMAGE_FOLDER_LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image> (png/jpg)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
ROTATIONS = (0, 90, 180, 270)


# -- episodes -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Episode(Task):
    """An N-way K-shot episode: indices into a :class:`ClassDataset`.

    Attributes:
        classes: the ``N`` data-set class ids; episode label ``i`` is ``classes[i]``.
        support: ``N·K`` example indices, class-major (label of position ``j`` is ``j // K``).
        query: ``N·Q`` example indices, class-major.
    """

    classes: tuple[int, ...]
    support: tuple[int, ...]
    query: tuple[int, ...]

    @property
    def ways(self) -> int:
        return len(self.classes)

    @property
    def shots(self) -> int:
        return len(self.support) // len(self.classes)

    @property
    def queries(self) -> int:
        return len(self.query) // len(self.classes)


class FewShotBatch(NamedTuple):
    """The support and query sets of a meta-batch of episodes (or sinusoid tasks).

    Shapes: ``support_x [T, N·K, *x]``, ``support_y [T, N·K]`` (class labels, ``long``) or
    ``[T, K, 1]`` (regression targets); ``query_x``/``query_y`` likewise with ``N·Q``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def chunk(self, start: int, stop: int) -> FewShotBatch:
        """Tasks ``start:stop`` of the batch."""
        return FewShotBatch(*(t[start:stop] for t in self))


@dataclasses.dataclass
class ClassDataset:
    """Images grouped by class.

    Attributes:
        images: ``[M, C, H, W]`` ``uint8`` (0 = background).
        class_examples: for each class id, the indices of its examples in ``images``.
        class_names: a readable name per class id (``"Alphabet/character01/rot090"``).
    """

    images: torch.Tensor
    class_examples: list[np.ndarray]
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.class_examples) != len(self.class_names):
            raise ValueError("class_examples and class_names differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_examples)


def sample_episode(
    dataset: ClassDataset,
    classes: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    rng: np.random.Generator,
) -> Episode:
    """Draw ``ways`` distinct classes among ``classes`` and ``shots + queries`` distinct examples of each."""
    if ways > len(classes):
        raise ConfigError(f"data.ways={ways} exceeds the {len(classes)} classes of this split")
    chosen = rng.choice(classes, size=ways, replace=False)
    support, query = [], []
    for c in chosen:  # one draw per class (N ≤ 60), each a vectorised choice of its K + Q examples
        examples = dataset.class_examples[int(c)]
        if shots + queries > len(examples):
            raise ConfigError(
                f"class {dataset.class_names[int(c)]!r} has {len(examples)} examples; "
                f"shots + queries = {shots + queries} needs more"
            )
        picked = rng.choice(examples, size=shots + queries, replace=False)
        support.append(picked[:shots])
        query.append(picked[shots:])
    return Episode(
        classes=tuple(int(c) for c in chosen),
        support=tuple(int(i) for i in np.concatenate(support)),
        query=tuple(int(i) for i in np.concatenate(query)),
    )


def collate(dataset: ClassDataset, episodes: Sequence[Episode], device: torch.device) -> FewShotBatch:
    """Gather the images of episodes of one shape into a :class:`FewShotBatch` of floats in ``[0, 1]``."""
    shapes = {(e.ways, e.shots, e.queries) for e in episodes}
    if len(shapes) != 1:
        raise ValueError(f"a batch needs episodes of one (ways, shots, queries) shape, got {sorted(shapes)}")
    ways, shots, queries = shapes.pop()
    support = torch.as_tensor(np.array([e.support for e in episodes]))
    query = torch.as_tensor(np.array([e.query for e in episodes]))
    labels = torch.arange(ways)
    return FewShotBatch(
        support_x=_float_images(dataset.images[support], device),
        support_y=labels.repeat_interleave(shots).expand(len(episodes), -1).to(device),
        query_x=_float_images(dataset.images[query], device),
        query_y=labels.repeat_interleave(queries).expand(len(episodes), -1).to(device),
    )


def _float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device=device, dtype=torch.float32).div_(255.0)


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """``ways``-way ``shots``-shot episodes with ``queries`` query examples per class."""

    ways: int
    shots: int
    queries: int


def alphabet_groups(dataset: ClassDataset, classes: np.ndarray) -> list[np.ndarray]:
    """``classes`` grouped by the alphabet their name starts with (``"Alphabet/characterNN/rotXXX"``; a
    character's rotations stay in its alphabet's group), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for c in np.asarray(classes):
        groups.setdefault(dataset.class_names[int(c)].split("/", 1)[0], []).append(int(c))
    return [np.array(g) for g in groups.values()]


class EpisodeSampler(TaskSampler):
    """N-way K-shot episodes over the train/test classes of a :class:`ClassDataset`.

    Training may use another shape than testing (Prototypical Networks train 60-way, Snell et al. 2017 §3).
    ``held_out(n, seed)`` is a fixed set: the same ``(n, seed)`` always gives the same episodes.
    ``fixed_test`` (Lake's ``all_runs``) replaces the drawn test episodes by given ones.
    ``train_groups`` (e.g. :func:`alphabet_groups`) makes every training episode draw all its classes from
    one group, the group uniform among those with at least ``train_shape.ways`` classes — Lake et al.
    (2015)'s runs are built within one alphabet, where characters look more alike than across alphabets.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        train_classes: np.ndarray,
        test_classes: np.ndarray,
        train_shape: EpisodeShape,
        test_shape: EpisodeShape,
        fixed_test: Sequence[Episode] = (),
        train_groups: Sequence[np.ndarray] = (),
    ) -> None:
        if len(np.intersect1d(train_classes, test_classes)):
            raise ValueError("train and test classes overlap")
        self.dataset = dataset
        self.classes = {"train": np.asarray(train_classes), "test": np.asarray(test_classes)}
        self.shapes = {"train": train_shape, "test": test_shape}
        self.fixed_test = list(fixed_test)
        self.train_groups = [g for g in train_groups if len(g) >= train_shape.ways]
        if train_groups and not self.train_groups:
            raise ConfigError(
                f"no alphabet has data.train_ways={train_shape.ways} training classes "
                f"(largest: {max(len(g) for g in train_groups)}); lower data.train_ways or data.ways"
            )

    def sample(self, n: int, *, split: str, rng: np.random.Generator) -> list[Episode]:
        if split not in self.classes:
            raise ValueError(f"unknown split {split!r}; valid: train, test")
        shape = self.shapes[split]
        if split == "train" and self.train_groups:
            groups = [self.train_groups[i] for i in rng.integers(len(self.train_groups), size=n)]
        else:
            groups = [self.classes[split]] * n
        return [
            sample_episode(self.dataset, classes, shape.ways, shape.shots, shape.queries, rng)
            for classes in groups
        ]

    def held_out(self, n: int, *, seed: int) -> list[Episode]:
        if self.fixed_test:
            return self.fixed_test[:n]
        return self.sample(n, split="test", rng=split_rng(seed, "test"))

    def task_from_dict(self, data: dict[str, Any]) -> Episode:
        return Episode.from_dict(data)

    def batch(self, episodes: Sequence[Episode], device: torch.device) -> FewShotBatch:
        return collate(self.dataset, episodes, device)


# -- sinusoid regression (MAML §5.1) ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SinusoidTask(Task):
    """``y = amplitude · sin(x − phase)``; ``seed`` fixes the task's support and query inputs."""

    amplitude: float
    phase: float
    seed: int


class SinusoidSampler(TaskSampler):
    """Sinusoid regression tasks of Finn et al. (2017, arXiv:1703.03400) §5.1.

    Args:
        train_shots: support points per training task (K = 10 in the paper).
        test_shots: support points per held-out task (5 or 10 in Table 2).
        queries: query points per task (the loss / MSE is taken on them).
        amplitude, phase, x_range: the task and input distributions (U[0.1, 5], U[0, π], U[−5, 5]).
    """

    def __init__(
        self,
        train_shots: int = 10,
        test_shots: int = 5,
        queries: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, float(np.pi)),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.shots = {"train": train_shots, "test": test_shots}
        self.queries, self.amplitude, self.phase, self.x_range = queries, amplitude, phase, x_range

    def sample(self, n: int, *, split: str, rng: np.random.Generator) -> list[SinusoidTask]:
        if split not in self.shots:
            raise ValueError(f"unknown split {split!r}; valid: train, test")
        amp = rng.uniform(*self.amplitude, size=n)
        phase = rng.uniform(*self.phase, size=n)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return [SinusoidTask(float(a), float(p), int(s)) for a, p, s in zip(amp, phase, seeds, strict=True)]

    def held_out(self, n: int, *, seed: int) -> list[SinusoidTask]:
        return self.sample(n, split="test", rng=split_rng(seed, "test"))

    def task_from_dict(self, data: dict[str, Any]) -> SinusoidTask:
        return SinusoidTask.from_dict(data)

    def batch(self, tasks: Sequence[SinusoidTask], device: torch.device, split: str = "test") -> FewShotBatch:
        """Support (``K`` points) and query points of each task: ``x, y [T, points, 1]``."""
        k, q = self.shots[split], self.queries
        x = np.stack([np.random.default_rng(t.seed).uniform(*self.x_range, size=k + q) for t in tasks])
        amp = np.array([t.amplitude for t in tasks])[:, None]
        phase = np.array([t.phase for t in tasks])[:, None]
        y = amp * np.sin(x - phase)
        xt = torch.as_tensor(x, dtype=torch.float32, device=device).unsqueeze(-1)
        yt = torch.as_tensor(y, dtype=torch.float32, device=device).unsqueeze(-1)
        return FewShotBatch(xt[:, :k], yt[:, :k], xt[:, k:], yt[:, k:])


# -- loaders ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$METARL_CACHE`` or ``~/.cache/metarl``: where decoded data sets are kept."""
    return Path(os.environ.get("METARL_CACHE", Path.home() / ".cache" / "metarl"))


def _load_image(path: Path, size: int, mode: str = "L") -> np.ndarray:
    """An image resized to ``size × size``: grey-scale (``mode="L"``) inverted so that ink is 255 and
    paper 0, or RGB ``[3, size, size]``. A file that cannot be decoded is a one-line :class:`ConfigError`
    naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode).resize((size, size), Image.Resampling.LANCZOS)
            pixels = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"image {str(path)!r} cannot be decoded ({reason}); replace or remove it") from None
    return 255 - pixels if mode == "L" else pixels.transpose(2, 0, 1)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _rotated(images: torch.Tensor, degrees: int) -> torch.Tensor:
    """Rotate ``[..., H, W]`` images counter-clockwise by a multiple of 90°."""
    return torch.rot90(images, k=degrees // 90, dims=(-2, -1))


def _omniglot_characters(root: Path, size: int, cache_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Every character of both halves: ``images [chars, drawers, size, size] uint8`` and the names
    ``"<half>/<Alphabet>/<characterNN>"``; decoded once, then read from an ``.npz`` cache."""
    halves = [h for h in ("images_background", "images_evaluation") if (root / h).is_dir()]
    if not halves:
        raise ConfigError(f"Omniglot not found at {str(root)!r}; expected {OMNIGLOT_LAYOUT}")
    folders = sorted(
        c for h in halves for a in (root / h).iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir()
    )
    names = [str(f.relative_to(root)) for f in folders]
    files = [_image_files(f) for f in folders]
    # keyed by every image's name, size and modification time: a replaced or corrupted file is decoded anew
    stats = "|".join(
        f"{p.name}:{st.st_size}:{st.st_mtime_ns}" for fs in files for p in fs for st in [p.stat()]
    )
    key = hashlib.sha1(f"{root.resolve()}|{size}|{'|'.join(names)}|{stats}".encode()).hexdigest()[:12]
    cache = cache_dir / f"omniglot_{size}px_{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as data:
                return data["images"], list(data["names"])
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache: decode again and replace it
    from tqdm import tqdm

    desc = f"decoding Omniglot (once; cached in {cache_dir})"
    decoding = tqdm(files, desc=desc, unit="char", leave=False, disable=None)  # shown on a terminal only
    per_char = [[_load_image(p, size) for p in fs] for fs in decoding]
    counts = {len(c) for c in per_char}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(
            f"Omniglot at {str(root)!r}: characters have {sorted(counts)} drawings; expected 20 each"
        )
    images = np.stack([np.stack(c) for c in per_char])
    cache_dir.mkdir(parents=True, exist_ok=True)
    packed = io.BytesIO()
    np.savez(packed, images=images, names=np.array(names))
    atomic.write_bytes(cache, packed.getvalue())  # a temp file of its own: runs started together both write
    return images, names


def _read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"split file {str(path)!r} is missing; expected {OMNIGLOT_LAYOUT}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"split file {str(path)!r} is not text; expected {OMNIGLOT_LAYOUT}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _vinyals_split(path: Path, by_name: dict[str, int]) -> list[tuple[int, int]]:
    """The ``(character, angle)`` classes of a Vinyals split file; a bad line names the file and line."""
    classes = []
    for number, line in enumerate(_read_split_file(path), 1):
        try:
            classes.append(_parse_vinyals(line, by_name))
        except ConfigError as exc:
            raise ConfigError(f"split file {str(path)!r} entry {number}: {exc}") from None
    return classes


def load_omniglot(
    root: str | Path,
    split: str = "vinyals",
    size: int = 28,
    rotations: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[ClassDataset, np.ndarray, np.ndarray, list[Episode]]:
    """Omniglot with the classes of ``split``: ``(dataset, train_classes, test_classes, fixed_test)``.

    ``fixed_test`` is empty except for ``split="lake"``, where it holds the 20 ``all_runs`` episodes
    (20-way one-shot, one query per class; the run's ``class_labels.txt`` gives each query's class).
    ``rotations`` adds 90/180/270° rotations of the *training* characters as new classes (the test
    characters of ``"vinyals"`` are rotated too, as in its list files; ``"maml"`` rotates both halves).
    """
    root = Path(root)
    if not str(root) or not root.is_dir():
        raise ConfigError(
            f"Omniglot root {str(root)!r} does not exist (set --data-root); expected {OMNIGLOT_LAYOUT}"
        )
    chars, names = _omniglot_characters(root, size, Path(cache_dir) if cache_dir else default_cache_dir())
    base = torch.from_numpy(chars)  # [chars, drawers, H, W]
    by_name = {n.split("/", 1)[1]: i for i, n in enumerate(names)}  # "Alphabet/characterNN" -> index
    if split == "vinyals":
        split_dir = root / "splits" / "vinyals"
        train = _vinyals_split(split_dir / "train.txt", by_name)
        test = _vinyals_split(split_dir / "test.txt", by_name)
        if not rotations:
            train = [c for c in train if c[1] == 0]
    elif split == "maml":
        order = np.random.default_rng(1).permutation(len(names))
        angles = ROTATIONS if rotations else (0,)
        train = [(int(i), a) for i in order[:1200] for a in angles]
        test = [(int(i), a) for i in order[1200:] for a in angles]
    elif split == "lake":
        angles = ROTATIONS if rotations else (0,)
        train = [(i, a) for i, n in enumerate(names) if n.startswith("images_background/") for a in angles]
        test = []
    else:
        raise ConfigError(f"data.split {split!r} is not valid for omniglot; valid: vinyals, maml, lake")
    classes = train + test
    drawers = base.shape[1]
    images = torch.stack([_rotated(base[i], a) for i, a in classes]).reshape(-1, 1, size, size)
    class_examples = [np.arange(c * drawers, (c + 1) * drawers) for c in range(len(classes))]
    class_names = [f"{names[i].split('/', 1)[1]}/rot{a:03d}" for i, a in classes]
    dataset = ClassDataset(images, class_examples, class_names)
    train_ids, test_ids = np.arange(len(train)), np.arange(len(train), len(classes))
    fixed: list[Episode] = []
    if split == "lake":
        dataset, fixed = _append_lake_runs(dataset, root, size)
        test_ids = np.arange(len(train), dataset.num_classes)
    return dataset, train_ids, test_ids, fixed


def _parse_vinyals(line: str, by_name: dict[str, int]) -> tuple[int, int]:
    """``"Angelic/character01/rot090"`` → ``(character index, 90)``."""
    parts = line.split("/")
    if len(parts) != 3 or not parts[2].startswith("rot") or not parts[2][3:].isdigit():
        raise ConfigError(f"{line!r} is not 'Alphabet/characterNN/rotDDD'")
    alphabet, character, rot = parts
    key = f"{alphabet}/{character}"
    if key not in by_name:
        raise ConfigError(f"split entry {line!r} names no character of the data; expected {OMNIGLOT_LAYOUT}")
    return by_name[key], int(rot[3:])


def _append_lake_runs(dataset: ClassDataset, root: Path, size: int) -> tuple[ClassDataset, list[Episode]]:
    """Lake et al. (2015): 20 runs, each 20 classes with one training image and one test image.

    Each run's classes become 20 new classes (2 examples: its training image, then its test image);
    ``class_labels.txt`` pairs ``test/itemNN.png`` with ``training/classNN.png``.
    """
    runs_dir = root / "all_runs"
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not runs:
        raise ConfigError(f"Lake's all_runs not found at {str(runs_dir)!r}; expected {OMNIGLOT_LAYOUT}")
    new_images, examples, names, episodes = [], list(dataset.class_examples), list(dataset.class_names), []
    offset = dataset.images.shape[0]
    for run in runs:
        labels = run / "class_labels.txt"
        pairs = [line.split() for line in _read_split_file(labels)]
        if any(len(pair) != 2 for pair in pairs):
            raise ConfigError(f"{str(labels)!r}: every line must be 'test/itemNN.png training/classNN.png'")
        pairs.sort(key=lambda p: p[1])  # by training class, so episode label i is class i+1
        first_class = len(examples)
        for test_item, train_item in pairs:
            new_images += [
                _load_image(run.parent / train_item, size),
                _load_image(run.parent / test_item, size),
            ]
            examples.append(np.array([offset, offset + 1]))
            names.append(f"all_runs/{train_item}")
            offset += 2
        ids = range(first_class, len(examples))
        episodes.append(
            Episode(
                classes=tuple(ids),
                support=tuple(int(examples[c][0]) for c in ids),
                query=tuple(int(examples[c][1]) for c in ids),
            )
        )
    extra = torch.from_numpy(np.stack(new_images)).unsqueeze(1)
    return ClassDataset(torch.cat([dataset.images, extra]), examples, names), episodes


def load_image_folder(
    root: str | Path, size: int = 28, channels: int = 1
) -> tuple[ClassDataset, np.ndarray, np.ndarray]:
    """Your own data, one folder per class: ``(dataset, train_classes, test_classes)``.

    Layout: ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``; images are resized to
    ``size × size``, grey-scale (``channels=1``, inverted like Omniglot: dark ink → high values) or RGB
    (``channels=3``, not inverted).
    """
    root = Path(root)
    splits = [root / "train", root / "test"]
    if not str(root) or not all(s.is_dir() for s in splits):
        raise ConfigError(
            f"image folder {str(root)!r} not found or incomplete; expected {IMAGE_FOLDER_LAYOUT}"
        )
    images, examples, names, counts = [], [], [], []
    for split in splits:
        folders = sorted(p for p in split.iterdir() if p.is_dir())
        counts.append(len(folders))
        for folder in folders:
            files = _image_files(folder)
            if not files:
                raise ConfigError(
                    f"class folder {str(folder)!r} holds no images; expected {IMAGE_FOLDER_LAYOUT}"
                )
            start = len(images)
            for path in files:
                if channels == 1:
                    images.append(_load_image(path, size)[None])
                else:
                    images.append(_load_image(path, size, "RGB"))
            examples.append(np.arange(start, len(images)))
            names.append(f"{split.name}/{folder.name}")
    if 0 in counts:
        raise ConfigError(f"image folder {str(root)!r} has an empty split; expected {IMAGE_FOLDER_LAYOUT}")
    dataset = ClassDataset(torch.from_numpy(np.stack(images)), examples, names)
    return dataset, np.arange(counts[0]), np.arange(counts[0], counts[0] + counts[1])


def build_sampler(data: Any) -> EpisodeSampler | SinusoidSampler:
    """The task sampler a ``DataConfig`` describes (every supervised builder goes through here)."""
    if data.dataset == "sinusoid":
        return SinusoidSampler(data.train_shots or data.shots, data.shots, data.queries)
    test = EpisodeShape(data.ways, data.shots, data.queries)
    train = EpisodeShape(
        data.train_ways or data.ways, data.train_shots or data.shots, data.train_queries or data.queries
    )
    if data.dataset == "omniglot":
        dataset, train_ids, test_ids, fixed = load_omniglot(
            data.root, data.split, data.image_size, data.rotations, data.cache_dir or None
        )
        if fixed and (test.ways, test.shots, test.queries) != (20, 1, 1):
            raise ConfigError(
                "data.split 'lake' evaluates 20-way 1-shot with 1 query: set ways=20, shots=1, queries=1"
            )
        groups = alphabet_groups(dataset, train_ids) if data.within_alphabet else []
        return EpisodeSampler(dataset, train_ids, test_ids, train, test, fixed, groups)
    if data.within_alphabet:
        raise ConfigError("data.within_alphabet needs data.dataset 'omniglot' (classes named by alphabet)")
    dataset, train_ids, test_ids = load_image_folder(data.root, data.image_size, data.channels)
    return EpisodeSampler(dataset, train_ids, test_ids, train, test)


def build_image_sampler(data: Any, algo_name: str) -> EpisodeSampler:
    """``build_sampler`` for learners that classify images: a clear error for ``sinusoid`` data."""
    tasks = build_sampler(data)
    if not isinstance(tasks, EpisodeSampler):
        raise ConfigError(f"{algo_name} classifies images: data.dataset must be 'omniglot' or 'image_folder'")
    return tasks

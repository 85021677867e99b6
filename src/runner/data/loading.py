"""Data: CIFAR-10 read safely from the official "python version" files, cached as uint8 arrays, a synthetic
stand-in that needs no files, the train/val/test split, and device-resident batching.

The whole uint8 data set lives on the training device as one tensor (50,000 x 3 x 32 x 32 bytes = 154 MB), and a
batch is an index slice of it: no DataLoader, no per-image PIL work (uint8 is 4x less to move than float).
"""

import codecs
import hashlib
import io
import json
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runner.config import DataError
from runner.data import checkpoint

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the archive, as published on the CIFAR-10 page
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Reading the official pickles without ever running code from them

def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    return core.multiarray._reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, strings, ints and plain numpy arrays.

    A pickle can name any importable callable and have it called on load; refusing every global except the few
    that rebuild an ndarray makes loading a hostile file fail instead of executing it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(str, "latin1"): a pure conversion
        ("_codecs", "encode"): lambda: codecs.encode,
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refused to load global '{module}.{name}': not part of a CIFAR batch")
        return factory()


def _unpickle(raw: bytes, source: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:  # truncated, corrupt or hostile: all mean "not a usable CIFAR file"
        raise DataError(f"{source}: not a valid CIFAR-10 pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_batch(raw: bytes, source: str, expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file's bytes -> images (N, 3, 32, 32) uint8 and labels (N,) int64, structure checked."""
    batch = _unpickle(raw, source)
    missing = {"data", "labels"} - batch.keys()
    if missing:
        raise DataError(f"{source}: missing key(s) {sorted(missing)}; found {sorted(batch.keys())}")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: 'labels' must be a list of integers ({err})") from err
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    if expected_count is not None and len(data) != expected_count:
        raise DataError(f"{source}: {len(data)} images, expected {expected_count} (batches.meta num_cases_per_batch)")
    return data.reshape(-1, 3, 32, 32), labels


def _read_members(root: Path) -> tuple[dict[str, bytes], str]:
    """The raw bytes of every CIFAR-10 file, from the folder if present, else from the archive (never extracted)."""
    names = (*TRAIN_BATCHES, TEST_BATCH, "batches.meta")
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        absent = [n for n in names if not (folder / n).is_file()]
        if absent:
            raise DataError(f"{folder}: missing {', '.join(absent)}; put the complete official "
                            f"'{CIFAR10_FOLDER}' folder there (or the '{CIFAR10_ARCHIVE}' archive in {root})")
        return {n: (folder / n).read_bytes() for n in names}, str(folder)
    archive = root / CIFAR10_ARCHIVE
    members = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in names:
                    members[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot read the archive ({err}); delete it and run again to re-download") from err
    absent = [n for n in names if n not in members]
    if absent:
        raise DataError(f"{archive}: the archive lacks {', '.join(absent)}")
    return members, str(archive)


def read_cifar10(root: Path) -> dict[str, np.ndarray]:
    """Decode and check CIFAR-10 under root: {'train_x', 'train_y', 'test_x', 'test_y'} as uint8 / int64 arrays."""
    raw, where = _read_members(root)
    meta = _unpickle(raw["batches.meta"], f"{where}/batches.meta")
    per_batch = meta.get("num_cases_per_batch")
    if not isinstance(per_batch, int) or per_batch <= 0:
        raise DataError(f"{where}/batches.meta: 'num_cases_per_batch' must be a positive integer, found {per_batch!r}")
    train = [parse_batch(raw[n], f"{where}/{n}", per_batch) for n in TRAIN_BATCHES]
    test_x, test_y = parse_batch(raw[TEST_BATCH], f"{where}/{TEST_BATCH}", per_batch)
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
    }


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_url  # 6 s import: only when a download is really needed

    try:
        download_url(CIFAR10_URL, str(root), CIFAR10_ARCHIVE, md5=CIFAR10_MD5)
    except Exception as err:
        raise DataError(
            f"CIFAR-10 is not under {root} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put the official '{CIFAR10_FOLDER}' folder or '{CIFAR10_ARCHIVE}' in {root}, "
            f"or point runner at a copy: data.root=/path/to/dir or RUNNER_DATA_DIR=/path/to/dir"
        ) from err


# ---------------------------------------------------------------------------------------------------------------
# The decoded-array cache: a later run loads 184 MB of uint8 in a fraction of a second instead of unpickling

def _fingerprint(root: Path) -> list:
    """Names, sizes and modification times of the source files: any change to them makes the cache stale."""
    folder = root / CIFAR10_FOLDER
    paths = [folder / n for n in (*TRAIN_BATCHES, TEST_BATCH, "batches.meta")] if folder.is_dir() else [root / CIFAR10_ARCHIVE]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _checksums(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {k: zlib.crc32(memoryview(np.ascontiguousarray(v)).cast("B")) for k, v in sorted(arrays.items())}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runner"


def _cache_path(root: Path, cache_dir: Path) -> Path:
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"cifar10-{key}.npz"


def _load_cache(path: Path, fingerprint: list) -> dict[str, np.ndarray] | None:
    """The cached arrays if the cache matches the sources and its checksums, else None (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            if header.get("version") != CACHE_VERSION or header.get("fingerprint") != fingerprint:
                return None
            arrays = {k: npz[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except Exception:  # unreadable in any way (truncated zip, bad header, ...): rebuild, never trust it
        return None
    if header.get("crc32") != _checksums(arrays):
        return None
    return arrays


def _save_cache(path: Path, fingerprint: list, arrays: dict[str, np.ndarray]) -> None:
    header = json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "crc32": _checksums(arrays)})
    try:
        checkpoint.atomic_write(path, lambda f: np.savez(f, header=np.array(header), **arrays))
    except OSError:
        pass  # a read-only or full cache location only costs the next run a re-decode


def load_cifar10(root: Path, cache_dir: Path, download: bool) -> dict[str, np.ndarray]:
    root = Path(root)
    if not (root / CIFAR10_FOLDER).is_dir() and not (root / CIFAR10_ARCHIVE).is_file():
        if not download:
            raise DataError(f"CIFAR-10 is not under {root}: put '{CIFAR10_FOLDER}/' or '{CIFAR10_ARCHIVE}' there, "
                            "set data.root=/path/to/dir, or allow data.download=true")
        root.mkdir(parents=True, exist_ok=True)
        _download(root)
    fingerprint = _fingerprint(root)
    path = _cache_path(root, cache_dir)
    arrays = _load_cache(path, fingerprint)
    if arrays is None:
        arrays = read_cifar10(root)
        _save_cache(path, fingerprint, arrays)
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data: CIFAR-shaped, learnable, made from a seed

def make_synthetic(train_examples: int, test_examples: int, noise: float, seed: int, num_classes: int = 10):
    """Each class is a smooth random prototype (4x4 noise upsampled to 32x32); each image is its class prototype,
    rolled by up to 3 pixels, contrast-scaled by 0.6..1.4, plus Gaussian pixel noise of std `noise` (0..255 scale)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (num_classes, 3, 4, 4)).astype(np.float32))
    protos = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False).numpy()

    def sample(n):
        y = rng.integers(0, num_classes, n)
        x = protos[y] * rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
        shifts = rng.integers(-3, 4, (n, 2))
        for dy in range(-3, 4):  # roll per shift value: 49 vectorized groups instead of n Python iterations
            for dx in range(-3, 4):
                sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                x[sel] = np.roll(x[sel], (dy, dx), axis=(2, 3))
        x = 128.0 + 50.0 * x + rng.normal(0.0, noise, x.shape).astype(np.float32)
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = sample(train_examples)
    test_x, test_y = sample(test_examples)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


# ---------------------------------------------------------------------------------------------------------------
# Splits on the device

@dataclass
class Splits:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) per split, on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


def load_arrays(cfg) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The raw train/test arrays the data config names, and the class names."""
    if cfg.name == "synthetic":
        arrays = make_synthetic(cfg.train_examples, cfg.test_examples, cfg.noise, cfg.generator_seed, cfg.num_classes)
        return arrays, tuple(f"class_{i}" for i in range(cfg.num_classes))
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    return load_cifar10(Path(cfg.root), cache_dir, cfg.download), CIFAR10_CLASSES


def select_classes(arrays: dict[str, np.ndarray], classes: tuple[str, ...], keep) -> tuple[dict, tuple[str, ...]]:
    """A task of some classes (`data.classes=[5,6,7,8,9]`): the train and test images of those classes only,
    relabelled 0..k-1 in the order listed. keep=None: all classes, unchanged."""
    if keep is None:
        return arrays, classes
    keep = [int(c) for c in keep]
    relabel = np.full(len(classes), -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    out = {}
    for part in ("train", "test"):
        mask = np.isin(arrays[f"{part}_y"], keep)
        out[f"{part}_x"], out[f"{part}_y"] = arrays[f"{part}_x"][mask], relabel[arrays[f"{part}_y"][mask]]
    return out, tuple(classes[c] for c in keep)


def load_splits(cfg, device) -> Splits:
    """The splits the data config `cfg` names (its class subset, validation hold-out, training subset), on the
    device: what every command that trains or evaluates on a config's data starts from."""
    arrays, classes = select_classes(*load_arrays(cfg), cfg.classes)
    return split(arrays, classes, cfg.val_size, cfg.train_size, cfg.split_seed, device,
                 train_half=cfg.train_half, per_class=cfg.per_class)


def split(arrays: dict[str, np.ndarray], classes: tuple[str, ...], val_size: int, train_size: int | None, seed: int,
          device, train_half: str | None = None, per_class: int | None = None) -> Splits:
    """Hold val_size training images out for validation (a seeded permutation), optionally keep the first or second
    half of the rest (train_half: a pretraining run and a transfer run on disjoint images), then train_size of it,
    then the first per_class images of each class (few labels), and move everything to the device once. The test
    set stays apart until the final evaluation."""
    n = len(arrays["train_y"])
    if val_size >= n:
        raise DataError(f"data.val_size={val_size} holds out all {n} training images of this task; lower it "
                        "(data.val_size=<images>).")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_half is not None:
        half = len(train_idx) // 2
        train_idx = train_idx[:half] if train_half == "first" else train_idx[half:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    if per_class is not None:
        labels = arrays["train_y"][train_idx]
        picked = [train_idx[labels == c][:per_class] for c in range(len(classes))]
        short = [classes[c] for c, idx in enumerate(picked) if len(idx) < per_class]
        if short:
            raise DataError(f"data.per_class={per_class}: fewer training images than that for {', '.join(short)} "
                            "after the validation hold-out; lower data.per_class or data.val_size.")
        train_idx = np.sort(np.concatenate(picked))

    def put(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    x, y = arrays["train_x"], arrays["train_y"]
    return Splits(put(x[train_idx]), put(y[train_idx]), put(x[val_idx]), put(y[val_idx]),
                  put(arrays["test_x"]), put(arrays["test_y"]), classes)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    """One epoch of shuffled full batches (the last partial batch is dropped so every step sees batch_size images;
    a split smaller than one batch gives one batch of all of it)."""
    n = len(x)
    perm = torch.randperm(n, device=x.device, generator=generator)
    steps = max(1, n // batch_size)
    for i in range(steps):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        yield x[idx], y[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]

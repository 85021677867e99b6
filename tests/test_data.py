"""The CIFAR-10 reader (structure checks, refusal of hostile pickles, archive and folder), the cache, the split,
synthetic data, and device-resident batching."""

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from runner.config import DataError
from runner.data import loading as data

PER_BATCH = 20


def write_cifar(root: Path, per_batch: int = PER_BATCH, seed: int = 0) -> dict:
    """A miniature CIFAR-10 in the official "python version" layout; returns the arrays written."""
    folder = root / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in (*data.TRAIN_BATCHES, data.TEST_BATCH):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {"batch_label": f"{name}", "labels": y, "data": x, "filenames": [f"{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (x, y)
    meta = {"label_names": list(data.CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def test_reads_the_folder_layout(tmp_path):
    written = write_cifar(tmp_path)
    arrays = data.read_cifar10(tmp_path)
    assert arrays["train_x"].shape == (5 * PER_BATCH, 3, 32, 32) and arrays["train_x"].dtype == np.uint8
    assert arrays["test_x"].shape == (PER_BATCH, 3, 32, 32)
    x1, y1 = written["data_batch_1"]
    assert np.array_equal(arrays["train_x"][:PER_BATCH].reshape(PER_BATCH, -1), x1)
    assert arrays["train_y"][:PER_BATCH].tolist() == y1
    # channel-first, as the official layout: the first 1024 values are the red plane
    assert np.array_equal(arrays["train_x"][0, 0].ravel(), x1[0, :1024])


def test_reads_the_archive_without_extracting(tmp_path):
    src = tmp_path / "src"
    written = write_cifar(src)
    archive = tmp_path / "root" / data.CIFAR10_ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / data.CIFAR10_FOLDER, arcname=data.CIFAR10_FOLDER)
    arrays = data.read_cifar10(archive.parent)
    assert np.array_equal(arrays["test_x"].reshape(PER_BATCH, -1), written["test_batch"][0])
    assert sorted(p.name for p in archive.parent.iterdir()) == [data.CIFAR10_ARCHIVE]


def test_truncated_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3"):
        data.read_cifar10(tmp_path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / data.CIFAR10_FOLDER / "data_batch_2"
    path.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2.*refused.*system"):
        data.read_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: {**b, "labels": [11] * PER_BATCH}, "labels must lie in 0..9"),
    (lambda b: {**b, "labels": b["labels"][:-1]}, "labels for"),
    (lambda b: {**b, "data": b["data"].astype(np.float32)}, "uint8"),
    (lambda b: {**b, "data": b["data"][:, :100]}, r"shape \(N, 3072\)"),
    (lambda b: {k: v for k, v in b.items() if k != "labels"}, "missing key"),
    (lambda b: {**b, "data": b["data"][:-2], "labels": b["labels"][:-2]}, "expected 20"),
])
def test_structure_errors_name_the_file_and_the_problem(tmp_path, corrupt, message):
    write_cifar(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    path.write_bytes(pickle.dumps(corrupt(batch), protocol=2))
    with pytest.raises(DataError, match=message) as err:
        data.read_cifar10(tmp_path)
    assert "test_batch" in str(err.value)


def test_missing_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data.root"):
        data.load_cifar10(tmp_path, tmp_path / "cache", download=False)


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    with pytest.raises(DataError, match=r"could not be downloaded.*network unreachable.*RUNNER_DATA_DIR"):
        data.load_cifar10(tmp_path, tmp_path / "cache", download=True)


def test_cache_is_used_then_rebuilt_when_stale_or_corrupt(tmp_path, monkeypatch):
    write_cifar(tmp_path / "root")
    cache = tmp_path / "cache"
    first = data.load_cifar10(tmp_path / "root", cache, download=False)
    (cached,) = cache.glob("*.npz")

    calls = []
    real_read = data.read_cifar10
    monkeypatch.setattr(data, "read_cifar10", lambda root: calls.append(root) or real_read(root))
    again = data.load_cifar10(tmp_path / "root", cache, download=False)
    assert calls == [] and np.array_equal(again["train_x"], first["train_x"])

    # corrupt the cache: flip bytes in the middle of the array data -> checksum mismatch -> re-read
    raw = bytearray(cached.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    cached.write_bytes(bytes(raw))
    again = data.load_cifar10(tmp_path / "root", cache, download=False)
    assert len(calls) == 1 and np.array_equal(again["train_x"], first["train_x"])

    # truncated cache -> re-read
    cached.write_bytes(cached.read_bytes()[:1000])
    data.load_cifar10(tmp_path / "root", cache, download=False)
    assert len(calls) == 2

    # a changed source file makes the cache stale -> re-read, with the new contents
    time.sleep(0.01)
    batch_path = tmp_path / "root" / data.CIFAR10_FOLDER / "data_batch_1"
    batch = pickle.loads(batch_path.read_bytes(), encoding="latin1")
    batch["labels"] = [0] * PER_BATCH
    batch_path.write_bytes(pickle.dumps(batch, protocol=2))
    fresh = data.load_cifar10(tmp_path / "root", cache, download=False)
    assert len(calls) == 3 and fresh["train_y"][:PER_BATCH].tolist() == [0] * PER_BATCH


def test_split_is_seeded_disjoint_and_keeps_test_apart():
    n = 100
    arrays = {"train_x": np.arange(n, dtype=np.uint8).repeat(3072).reshape(n, 3, 32, 32),
              "train_y": np.arange(n) % 10, "test_x": np.zeros((7, 3, 32, 32), np.uint8), "test_y": np.zeros(7, np.int64)}
    a = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu")
    b = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu")
    c = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 1, "cpu")
    ids = lambda x: set(x[:, 0, 0, 0].tolist())  # noqa: E731 - each image's id is its pixel value
    assert len(a.val_x) == 20 and len(a.train_x) == 80 and not ids(a.val_x) & ids(a.train_x)
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    assert len(a.test_x) == 7
    small = data.split(arrays, data.CIFAR10_CLASSES, 20, 30, 0, "cpu")
    assert len(small.train_x) == 30 and ids(small.train_x) <= ids(a.train_x)


def test_train_batches_cover_the_split_once_per_epoch():
    x = torch.arange(103, dtype=torch.uint8).reshape(103, 1, 1, 1)
    y = torch.arange(103)
    seen = [yb for _, yb in data.train_batches(x, y, 10, torch.Generator().manual_seed(0))]
    assert len(seen) == data.steps_per_epoch(103, 10) == 10 and all(len(b) == 10 for b in seen)
    flat = torch.cat(seen)
    assert len(set(flat.tolist())) == 100  # no repeats; the 3 left over are dropped this epoch


def test_synthetic_data_is_seeded_and_class_dependent():
    a = data.make_synthetic(300, 100, 30.0, seed=7)
    b = data.make_synthetic(300, 100, 30.0, seed=7)
    assert np.array_equal(a["train_x"], b["train_x"]) and a["train_x"].dtype == np.uint8
    assert a["train_x"].shape == (300, 3, 32, 32) and set(np.unique(a["train_y"])) == set(range(10))
    # class means differ far more than the noise in them: the labels carry signal
    means = np.stack([a["train_x"][a["train_y"] == k].mean(0) for k in range(10)])
    assert np.abs(means[:, None] - means[None]).mean() > 10


@pytest.mark.skipif(not (SHARED_DATA / data.CIFAR10_FOLDER).is_dir(), reason="no shared CIFAR-10 copy")
@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_shared_copy_counts_and_channel_means(tmp_path):
    arrays = data.load_cifar10(SHARED_DATA, tmp_path, download=False)
    assert arrays["train_x"].shape == (50000, 3, 32, 32) and arrays["test_x"].shape == (10000, 3, 32, 32)
    assert np.bincount(arrays["train_y"]).tolist() == [5000] * 10
    assert np.bincount(arrays["test_y"]).tolist() == [1000] * 10
    mean = arrays["train_x"].reshape(50000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=0.002)  # the official training-set channel means
    start = time.perf_counter()
    data.load_cifar10(SHARED_DATA, tmp_path, download=False)
    assert time.perf_counter() - start < 5  # from the cache (a re-decode takes far longer); the bench times it


# ---------------------------------------------------------------------------------------------------------------
# Task splits for transfer learning: classes, disjoint halves, labelled images per class

def _id_arrays(n: int = 200) -> dict:
    """Each image's id is its pixel value (mod 256 is avoided: n <= 256); label = id % 10."""
    return {"train_x": np.arange(n, dtype=np.uint8).repeat(3072).reshape(n, 3, 32, 32), "train_y": np.arange(n) % 10,
            "test_x": np.arange(50, dtype=np.uint8).repeat(3072).reshape(50, 3, 32, 32), "test_y": np.arange(50) % 10}


def test_select_classes_keeps_those_classes_relabelled_in_order():
    arrays, names = data.select_classes(_id_arrays(), data.CIFAR10_CLASSES, [7, 2, 5])
    assert names == ("horse", "bird", "dog")
    ids = arrays["train_x"][:, 0, 0, 0].astype(int)
    assert sorted(set(ids % 10)) == [2, 5, 7] and len(ids) == 60
    assert (arrays["train_y"] == np.select([ids % 10 == 7, ids % 10 == 2], [0, 1], 2)).all()
    assert (arrays["test_y"] == np.select([arrays["test_x"][:, 0, 0, 0] % 10 == c for c in (7, 2, 5)], [0, 1, 2])).all()
    assert data.select_classes(_id_arrays(), data.CIFAR10_CLASSES, None)[1] == data.CIFAR10_CLASSES


def test_train_halves_are_disjoint_and_cover_the_training_split():
    arrays = _id_arrays()
    ids = lambda x: set(x[:, 0, 0, 0].tolist())  # noqa: E731
    whole = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu")
    first = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu", train_half="first")
    second = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu", train_half="second")
    assert len(first.train_x) == len(second.train_x) == 90 and not ids(first.train_x) & ids(second.train_x)
    assert ids(first.train_x) | ids(second.train_x) == ids(whole.train_x)
    assert torch.equal(first.val_x, whole.val_x)  # the same validation images for both halves


def test_per_class_keeps_that_many_labelled_images_of_each_class():
    arrays = _id_arrays()
    few = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu", per_class=3)
    assert torch.bincount(few.train_y, minlength=10).tolist() == [3] * 10
    whole = data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu")
    assert set(few.train_x[:, 0, 0, 0].tolist()) <= set(whole.train_x[:, 0, 0, 0].tolist())
    with pytest.raises(DataError, match="data.per_class=50: fewer training images than that"):
        data.split(arrays, data.CIFAR10_CLASSES, 20, None, 0, "cpu", per_class=50)
    with pytest.raises(DataError, match="data.val_size=200 holds out all 200"):
        data.split(arrays, data.CIFAR10_CLASSES, 200, None, 0, "cpu")


def test_label_noise_on_cifar_flips_that_fraction_of_training_labels_only():
    import numpy as np

    from runner.data.loading import with_label_noise

    rng = np.random.default_rng(0)
    arrays = {"train_x": np.zeros((20000, 3, 32, 32), np.uint8), "train_y": rng.integers(0, 10, 20000),
              "test_x": np.zeros((10, 3, 32, 32), np.uint8), "test_y": np.arange(10)}
    noisy = with_label_noise(arrays, 0.3, 10, seed=0)
    changed = (noisy["train_y"] != arrays["train_y"]).mean()
    assert abs(changed - 0.3 * 0.9) < 0.015  # a flip draws the same class 1 time in 10
    assert noisy["test_y"] is arrays["test_y"] and noisy["train_y"].dtype == arrays["train_y"].dtype
    assert (with_label_noise(arrays, 0.3, 10, seed=0)["train_y"] == noisy["train_y"]).all()  # seeded
    assert (with_label_noise(arrays, 0.3, 10, seed=1)["train_y"] != noisy["train_y"]).any()

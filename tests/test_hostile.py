"""Hostile and broken input files, made here as an attacker or a disk fault would make them: each is refused in one
line that names the file and what to do, no code in any of them runs, and none makes loading run for long or
allocate without limit. The time bombs run in a child process: before they were refused they ran forever."""

import json
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import choices_of, compose_config
from runner.commands import ensemble
from runner.config import CheckpointError, ConfigError, DataError
from runner.data import checkpoint
from runner.data import loading as data
from runner.engine import train
from runner.nets import transfer
from test_data import PER_BATCH, write_cifar

ROOT = Path(__file__).resolve().parents[1]


def _timed_in_child(code: str, limit: float = 60) -> tuple[float, str]:
    """Run `code` (which sets `call`, a function of no arguments) in a fresh Python; returns the seconds call() took
    and the message of the error it raised. A call that never ends fails the test at `limit` seconds."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        import time
        start = time.perf_counter()
        try:
            call()
            message = "no error"
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
        print(time.perf_counter() - start)
        print(message)
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still loading after {limit} s")
    seconds, message = proc.stdout.strip().split("\n", 1)
    return float(seconds), message


def _tuple_bomb(levels: int = 40) -> bytes:
    """A pickle of {t40: 0}, t_i = (t_{i-1}, t_{i-1}): 40 memo references make it 210 bytes, and hashing the key
    (which unpickling a dict does) visits 2^40 tuples."""
    out = bytearray(b"\x80\x02}q\x00)")  # PROTO 2, EMPTY_DICT, BINPUT 0, EMPTY_TUPLE
    for i in range(1, levels + 1):
        out += b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86"  # BINPUT i, BINGET i, TUPLE2
    return bytes(out + b"K\x00s.")  # BININT1 0, SETITEM, STOP


def _nested(levels: int = 40, kind=list):
    """l_i = [l_{i-1}, l_{i-1}] (or a dict): pickled with memo references, tiny; unrolled, 2^levels elements."""
    node = kind()
    for _ in range(levels):
        node = [node, node] if kind is list else {"a": node, "b": node}
    return node


# ---------------------------------------------------------------------------------------------------------------
# CIFAR batches

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_self_referencing_nested_labels_are_refused_in_well_under_a_second(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "data_batch_1"
    batch = {"data": np.zeros((PER_BATCH, 3072), np.uint8), "labels": [_nested(39)] * PER_BATCH}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    assert path.stat().st_size < 70_000  # 61 KB of pixels, 0.4 KB of labels that unroll to 10^13
    seconds, message = _timed_in_child(f"""
        from pathlib import Path
        from runner.data import loading
        call = lambda: loading.read_cifar10(Path({str(tmp_path)!r}))
    """)
    assert seconds < 5
    assert message.startswith("DataError") and "data_batch_1: not a valid CIFAR-10 pickle (more than 16 open " \
        "MARKs, far more than a CIFAR batch nests)" in message  # (each level of the lists opens one)
    assert "data.root=" in message and "\n" not in message


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_tuple_key_that_takes_forever_to_hash_is_refused_at_once(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / data.CIFAR10_FOLDER / "data_batch_5").write_bytes(_tuple_bomb())
    seconds, message = _timed_in_child(f"""
        from pathlib import Path
        from runner.data import loading
        call = lambda: loading.read_cifar10(Path({str(tmp_path)!r}))
    """)
    assert seconds < 5
    assert message.startswith("DataError") and "data_batch_5: not a valid CIFAR-10 pickle" in message
    assert "tuples nested more than two deep" in message


def test_a_growing_codec_chain_is_refused(tmp_path):
    """_codecs.encode is admitted for latin1 (how protocol 2 writes bytes); hex doubles its input, so a chain of
    them would fill the memory from a few hundred bytes."""
    write_cifar(tmp_path)
    levels = 24  # 16 MB here; 40 would be a terabyte
    program = (b"\x80\x02}X\x04\x00\x00\x00datac_codecs\nencode\nq\x01" + b"h\x01" * levels
               + b"X\x01\x00\x00\x00aX\x06\x00\x00\x00latin1\x86R"  # encode("a", "latin1")
               + b"X\x03\x00\x00\x00hex\x86R" * levels + b"s.")
    (tmp_path / data.CIFAR10_FOLDER / "test_batch").write_bytes(program)
    with pytest.raises(DataError, match=r"test_batch: not a valid CIFAR-10 pickle .*_codecs.encode with bytes and "
                                        r"'hex' is not part of a CIFAR batch"):
        data.read_cifar10(tmp_path)


def test_an_array_claiming_a_huge_shape_allocates_nothing_for_it(tmp_path):
    """numpy pickles `_reconstruct(ndarray, (0,), b'b')` and then the real state; a hostile file claims 2 GB there."""
    written = write_cifar(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "data_batch_2"
    raw = path.read_bytes()
    at = raw.index(b"K\x00\x85", raw.index(b"ndarray"))  # BININT1 0, TUPLE1: the (0,) shape
    path.write_bytes(raw[:at] + b"J\xff\xff\xff\x7f\x85" + raw[at + 3:])  # BININT 2^31 - 1
    tracemalloc.start()
    try:
        arrays = data.read_cifar10(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20
    x2 = arrays["train_x"][PER_BATCH:2 * PER_BATCH].reshape(PER_BATCH, -1)
    assert np.array_equal(x2, written["data_batch_2"][0])


def test_a_file_larger_than_any_cifar_batch_is_refused_before_it_is_read(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "data_batch_4"
    with open(path, "r+b") as f:
        f.truncate(data.MAX_MEMBER_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DataError, match=r"data_batch_4: 67,108,865 bytes, more than any CIFAR-10 file") as err:
        data.load_cifar10(tmp_path, tmp_path / "cache", download=False)
    assert "\n" not in str(err.value)


def test_a_missing_batch_is_named_in_one_line(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / data.CIFAR10_FOLDER / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py: missing data_batch_3; put the complete official"):
        data.load_cifar10(tmp_path, tmp_path / "cache", download=False)


def test_a_mistyped_data_root_is_not_left_on_disk(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_network(url, root, *args, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision's does, before it fails
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    with pytest.raises(DataError, match="could not be downloaded"):
        data.load_cifar10(tmp_path / "dtaa" / "cifar", tmp_path / "cache", download=True)
    assert not (tmp_path / "dtaa").exists()


def test_a_training_size_larger_than_the_task_is_refused_with_the_count():
    arrays = {"train_x": np.zeros((200, 3, 32, 32), np.uint8), "train_y": np.arange(200) % 10,
              "test_x": np.zeros((5, 3, 32, 32), np.uint8), "test_y": np.zeros(5, np.int64)}
    with pytest.raises(DataError, match=r"data.train_size=150 is more than this task has: 90 training images"):
        data.split(arrays, data.CIFAR10_CLASSES, 20, 150, 0, "cpu", train_half="first")
    with pytest.raises(ConfigError, match=r"data.train_size=600 is invalid: must be null or an integer in \[1, 500\]"):
        compose_config(["data.train_size=600", "data.train_half=first"])  # 1200 - 200 held out, halved


def test_a_device_index_past_any_machine_is_refused_in_the_schema():
    with pytest.raises(ConfigError, match=r"device='cuda:99999999999999999999' is invalid: allowed: .*cuda:N"):
        compose_config(["device=cuda:99999999999999999999"])


def test_make_clean_leaves_outputs_and_data_alone(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    kept = [tmp_path / "outputs" / "run" / "__pycache__", tmp_path / "data" / "__pycache__"]
    gone = [tmp_path / "src" / "runner" / "__pycache__", tmp_path / "tests" / "__pycache__"]
    for folder in kept + gone:
        folder.mkdir(parents=True)
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert all(f.is_dir() for f in kept) and not any(f.exists() for f in gone)


# ---------------------------------------------------------------------------------------------------------------
# A fuzz over hostile CIFAR pickles, assembled opcode by opcode: a tuple nested through the memo at every place the
# loader inspects or prints a value, shapes that claim more than the file holds, floods of opcodes, copies of copies,
# and torn files. Each is refused in one line, in well under a second, with flat memory.

def _op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _op_bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw  # BINBYTES


def _op_int(n: int) -> bytes:
    size = (n.bit_length() + 8) // 8
    return b"\x8a" + bytes([size]) + n.to_bytes(size, "little", signed=True)  # LONG1: any integer


def _op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _memo_tuple(levels: int = 40) -> bytes:
    """t_i = (t_{i-1}, t_{i-1}) on the stack, through LONG_BINPUT/LONG_BINGET (memo slots 1000 on, clear of any
    other): 400 bytes anywhere in a pickle, 2^40 steps to hash, compare or print."""
    out = b")"
    for i in range(1000, 1000 + levels):
        out += b"r" + struct.pack("<I", i) + b"j" + struct.pack("<I", i) + b"\x86"
    return out


_SHAPE = _op_int(PER_BATCH) + _op_int(3072) + b"\x86"  # (20, 3072): TUPLE2
_PIXELS = _op_bytes(bytes(PER_BATCH * 3072))


def _dtype(spec=None, order=None) -> bytes:
    """numpy.dtype('u1', False, True), then its state (3, '|', None, None, None, -1, -1, 0), as numpy pickles it."""
    return (_op_global("numpy", "dtype") + (spec or _op_str("u1")) + b"\x89\x88\x87R" + b"(" + _op_int(3)
            + (order or _op_str("|")) + b"NNN" + _op_int(-1) + _op_int(-1) + _op_int(0) + b"tb")


def _array(raw=_PIXELS, shape=_SHAPE, dtype=None) -> bytes:
    """numpy's protocol-2 array: _reconstruct(ndarray, (0,), b'b'), then its state (1, shape, dtype, False, raw)."""
    return (_op_global("numpy.core.multiarray", "_reconstruct") + _op_global("numpy", "ndarray") + b"K\x00\x85"
            + _op_bytes(b"b") + b"\x87R" + b"(" + _op_int(1) + shape + (dtype or _dtype()) + b"\x89" + raw + b"tb")


def _frombuffer(buf=_PIXELS, dtype=None, shape=_SHAPE, order=None) -> bytes:
    """numpy's protocol-5 array: _frombuffer(buf, dtype, shape, order)."""
    return (_op_global("numpy.core.numeric", "_frombuffer") + b"(" + buf + (dtype or _dtype()) + shape
            + (order or _op_str("C")) + b"tR")


def _codec(text=None, encoding=None) -> bytes:
    """Bytes as Python 3 writes them into a protocol-2 pickle: _codecs.encode(str, 'latin1')."""
    return (_op_global("_codecs", "encode") + (text or _op_str("\0" * PER_BATCH * 3072))
            + (encoding or _op_str("latin1")) + b"\x86R")


def _batch(data=None, labels=None, key=None) -> bytes:
    """{'data': <array>, 'labels': [1, ...]}, PER_BATCH images."""
    labels = labels or b"](" + b"K\x01" * PER_BATCH + b"e"
    return b"\x80\x02}(" + (key or _op_str("data")) + (data or _array()) + _op_str("labels") + labels + b"u."


def _copies(make) -> bytes:
    """{'copies': [make(m), ... 64 times]}, m a megabyte string in the memo once: 64 MB if each call copies it."""
    slot = struct.pack("<I", 7)
    return (b"\x80\x02}" + _op_str("copies") + _op_str("\0" * 2**20) + b"r" + slot + b"0"  # LONG_BINPUT 7, POP
            + b"](" + make(b"j" + slot) * 64 + b"es.")


_BOMB = _memo_tuple()
_TORN = pickle.dumps({"batch_label": "x", "labels": [1] * PER_BATCH, "data": np.zeros((PER_BATCH, 3072), np.uint8),
                      "filenames": ["a.png"] * PER_BATCH}, protocol=2)
_VALID = {
    "numpy's protocol-2 array": _batch(),
    "numpy's protocol-5 array": _batch(_frombuffer()),
    "bytes through _codecs.encode": _batch(_array(raw=_codec())),
}
_HOSTILE = {
    # a memo-nested tuple wherever a value is looked at, hashed, compared or printed
    "nested tuple as a dict key": _batch(key=_BOMB),
    "nested tuple as a dtype's spec": _batch(_array(dtype=_dtype(spec=_BOMB))),
    "nested tuple as a dtype's byte order": _batch(_array(dtype=_dtype(order=_BOMB))),
    "nested tuple as an array's shape": _batch(_array(shape=_BOMB)),
    "nested tuple as an array's dtype": _batch(_array(dtype=_BOMB)),
    "nested tuple as an array's bytes": _batch(_array(raw=_BOMB)),
    "nested tuple as _frombuffer's bytes": _batch(_frombuffer(buf=_BOMB)),
    "nested tuple as _frombuffer's shape": _batch(_frombuffer(shape=_BOMB)),
    "nested tuple as _frombuffer's order": _batch(_frombuffer(order=_BOMB)),
    "nested tuple as the text of _codecs.encode": _batch(_array(raw=_codec(text=_BOMB))),
    "nested tuple as the encoding of _codecs.encode": _batch(_array(raw=_codec(encoding=_BOMB))),
    "nested tuple as the arguments of a call": _batch(_op_global("_codecs", "encode") + _BOMB + b"R"),
    "nested tuple as the labels": _batch(labels=_BOMB),
    "nested tuple as a label": _batch(labels=b"](" + _BOMB + b"K\x01" * (PER_BATCH - 1) + b"e"),
    "nested tuple as the data": _batch(_BOMB),
    "nested tuple as the whole file": b"\x80\x02" + _BOMB + b".",
    "batches.meta: nested tuple as num_cases_per_batch":
        b"\x80\x02}(" + _op_str("num_cases_per_batch") + _BOMB + b"u.",
    # sizes claimed beyond what the file holds
    "a shape of 2^31 - 1 images": _batch(_array(shape=_op_int(2**31 - 1) + _op_int(3072) + b"\x86")),
    "a shape of 2^62 x 2^62": _batch(_array(shape=_op_int(2**62) + _op_int(2**62) + b"\x86")),
    "_frombuffer claiming 2^40 images": _batch(_frombuffer(shape=_op_int(2**40) + _op_int(3072) + b"\x86")),
    "an integer of a megabyte": _batch(labels=b"](\x8b" + struct.pack("<i", 2**20) + b"\x01" * 2**20 + b"e"),
    "a number of a million digits": b"\x80\x02I" + b"9" * 10**6 + b"\n.",
    "a global named by a megabyte": _batch(_op_global("numpy" * 200_000, "dtype")),
    # floods: each opcode cheap, a million of them
    "a million NONE, POP": b"\x80\x02" + b"N0" * 10**6 + _batch()[2:],
    "a million MARKs": b"\x80\x02" + b"(" * 10**6 + _batch()[2:],
    "a million empty lists": b"\x80\x02" + b"]" * 10**6 + b".",
    "a tuple of 100,000 elements": b"\x80\x02(" + b"N" * 100_000 + b"t.",
    "lists nested 100,000 deep as the labels": _batch(labels=b"]" * 100_000 + b"a" * 99_999),
    # one megabyte made into 64
    "a megabyte encoded 64 times": _copies(lambda get: _codec(text=get)),
    "a megabyte made into 64 arrays": _copies(lambda get: _frombuffer(buf=_op_global("_codecs", "encode") + get
                                                                      + _op_str("latin1") + b"\x86R",
                                                                      shape=_op_int(2**20) + b"\x85")),
    # torn: cut by a kill, a full disk, a download that stopped
    **{f"torn after {cut} of {len(_TORN):,} bytes": _TORN[:cut] for cut in (1, 2, 30, 300, len(_TORN) // 2,
                                                                             len(_TORN) - 1)},
}


@pytest.mark.slow  # 40 files loaded twice in a child process, 8 s on 2 idle cores: `make test-all` and CI run it
def test_hostile_cifar_pickles_are_refused_in_one_line_at_once_with_flat_memory(tmp_path):
    """Each case is loaded twice in one child process (which a hang would not take the suite down with): timed, then
    under tracemalloc for its peak memory."""
    write_cifar(tmp_path)
    cases = []
    for i, (name, raw) in enumerate({**_VALID, **_HOSTILE}.items()):
        (tmp_path / f"case{i}").write_bytes(raw)
        target = "batches.meta" if name.startswith("batches.meta") else "data_batch_1"
        cases.append([name, target, str(tmp_path / f"case{i}")])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = textwrap.dedent(f"""
        import json, shutil, time, tracemalloc
        from pathlib import Path
        from runner.data import loading
        root = Path({str(tmp_path)!r})
        folder = root / loading.CIFAR10_FOLDER
        for name, target, case in json.loads((root / "cases.json").read_text()):
            print(json.dumps(["start", name]), flush=True)
            shutil.copy(folder / target, root / "good")
            shutil.copy(case, folder / target)
            for traced in (False, True):
                tracemalloc.start() if traced else None
                start = time.perf_counter()
                try:
                    loading.read_cifar10(root)
                    message = "no error"
                except Exception as err:
                    message = f"{{type(err).__name__}}: {{err}}"
                seconds = seconds if traced else time.perf_counter() - start
                peak = tracemalloc.get_traced_memory()[1] if traced else 0
                tracemalloc.stop()
            shutil.copy(root / "good", folder / target)
            print(json.dumps(["done", name, seconds, peak, message]), flush=True)
    """)
    limit = 120
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=limit,
                             cwd=ROOT).stdout
    except subprocess.TimeoutExpired as err:
        last = (err.stdout or b"").decode().strip().splitlines()[-1:] or ["?"]
        pytest.fail(f"still loading after {limit} s: {last[0]}")
    results = {line[1]: line[2:] for line in map(json.loads, out.splitlines()) if line[0] == "done"}
    assert len(results) == len(cases), out[-2000:]
    for name in _VALID:
        assert results[name][2] == "no error", name
    for name, (seconds, peak, message) in ((n, results[n]) for n in _HOSTILE):
        target = "batches.meta" if name.startswith("batches.meta") else "data_batch_1"
        assert message.startswith(f"DataError: {tmp_path / data.CIFAR10_FOLDER / target}: "), (name, message[:300])
        assert "\n" not in message and len(message) < 400 and "data.root=" in message, (name, message[:300])
        assert seconds < 1.5, (name, seconds)
        assert peak < 32 * 2**20, (name, f"{peak / 2**20:.0f} MB")
        if name.startswith("torn"):
            assert "it ends early: truncated" in message, (name, message)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: resume, model.pretrained, the ensemble command

FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "trainer.epochs=1",
        "diagnostics.every_steps=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One completed tiny run: checkpoints/last.pt (the run's state) and best.pt (weights only)."""
    run_dir = tmp_path_factory.mktemp("run")
    train.fit(compose_config(FAST), run_dir, choices_of(FAST))
    return run_dir


def _fit(run_dir: Path, overrides=()):
    overrides = [*FAST, *overrides]
    return train.fit(compose_config(overrides), run_dir, choices_of(overrides))


def _truncated_copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    last = to / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2])
    return last


class _Payload:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_damaged_auto_resume_checkpoint_names_the_file_and_the_ways_out(run, tmp_path):
    last = _truncated_copy(run, tmp_path / "run")
    with pytest.raises(CheckpointError) as err:
        _fit(tmp_path / "run", ["trainer.epochs=2"])
    message = str(err.value)
    assert message.startswith(f"{last} is damaged (truncated?)") and "\n" not in message
    assert "trainer.resume=never" in message and "hydra.run.dir=<new dir>" in message
    assert "best.pt holds weights only" in message and "model.pretrained=" in message


def test_a_hostile_checkpoint_is_refused_by_every_reader_without_running(run, tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {"head.weight": torch.zeros(1)}, "payload": _Payload(marker)}, evil)
    readers = [lambda: checkpoint.load(evil), lambda: transfer.read_state_dict(str(evil)),
               lambda: _fit(tmp_path / "resumed", [f"trainer.resume={evil}"])]
    for read in readers:
        with pytest.raises(CheckpointError, match=r"evil.pt is refused: loading it would run code \(posix.system\)") \
                as err:
            read()
        assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_a_hostile_plain_pickle_is_called_hostile_not_damaged(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(CheckpointError, match=r"evil.pkl is refused: loading it would run code \(posix.system\)"):
        checkpoint.load(evil)
    assert not marker.exists()


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("epoch 3: val acc 0.61\n")
    with pytest.raises(CheckpointError, match=r"notes.txt is not a PyTorch checkpoint \(it is text\).*"
                                              r"model.pretrained='.*notes.txt' needs a runner run directory"):
        transfer.read_state_dict(str(notes))


def test_weights_only_best_pt_cannot_resume_and_says_what_it_lacks(run, tmp_path):
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(CheckpointError, match=r"best.pt is not a runner checkpoint of this kind: it lacks optimizer, "
                                              r"step; give trainer.resume= another run directory"):
        _fit(tmp_path / "resumed", [f"trainer.resume={best}", "trainer.epochs=2"])


def test_resuming_another_architecture_is_one_line(run, tmp_path):
    with pytest.raises(CheckpointError, match=r"last.pt was made by another architecture: 6 of its 'model' tensors "
                                              r"have other shapes") as err:
        _fit(tmp_path / "resumed", [f"trainer.resume={run}", "trainer.resume_allow=[model]", "model.widths=[8,32]",
                                    "trainer.epochs=2"])
    assert "\n" not in str(err.value)


def test_the_ensemble_command_refuses_a_damaged_member_in_one_line(run, tmp_path, capsys):
    _truncated_copy(run, tmp_path / "member")
    with pytest.raises(SystemExit) as exit_:
        ensemble.main([str(tmp_path / "member"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "last.pt is damaged (truncated?)" in err and "leave" in err and "out of the ensemble" in err


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_checkpoint_whose_key_takes_forever_to_hash_is_refused_at_once(run, tmp_path):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(run / "checkpoints" / "best.pt") as src, zipfile.ZipFile(bomb, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, _tuple_bomb() if info.filename.endswith("data.pkl") else src.read(info))
    seconds, message = _timed_in_child(f"""
        from runner.data import checkpoint
        call = lambda: checkpoint.load({str(bomb)!r})
    """)
    assert seconds < 5
    assert message.startswith("CheckpointError") and "bomb.pt is refused: it builds a tuple of more than" in message


def test_a_checkpoint_nested_beyond_any_real_one_is_refused(tmp_path):
    """A config of 2^40 keys would stop resume's key-by-key comparison for ever."""
    path = tmp_path / "nested.pt"
    torch.save({"model": {}, "config": _nested(40, dict)}, path)
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="nested.pt holds more than 10,000,000 nested values"):
        checkpoint.load(path)
    assert time.perf_counter() - start < 5


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_legacy_format_checkpoint_whose_key_takes_forever_to_hash_is_refused_at_once(tmp_path):
    """torch.save's format before 1.6 is five pickles in a row: each is scanned, so that a tuple bomb in the fourth
    (the object) is refused before torch's loader would hash it for ever."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    raw, starts = legacy.read_bytes(), [0]
    for _ in range(5):
        starts.append(starts[-1] + list(pickletools.genops(raw[starts[-1]:]))[-1][2] + 1)
    legacy.write_bytes(raw[:starts[3]] + _tuple_bomb() + raw[starts[4]:])
    seconds, message = _timed_in_child(f"""
        from runner.data import checkpoint
        call = lambda: checkpoint.load({str(legacy)!r})
    """)
    assert seconds < 5
    assert message.startswith("CheckpointError") and "legacy.pt is refused: it builds a tuple of more than" in message


@pytest.mark.parametrize("tensor", [torch.zeros(1).expand(2**31 - 1), torch.zeros(2047).as_strided((1024, 1024), (1, 1)),
                                    torch.empty(2**40, device="meta")], ids=["stride 0", "overlapping", "meta"])
def test_a_tensor_claiming_more_elements_than_the_file_carries_is_refused(tmp_path, tensor):
    """A view saved with its storage: a few bytes in the file, 2^31 elements for the first copy (`.float()`, `.to()`,
    an arithmetic op) to allocate."""
    path = tmp_path / "claims.pt"
    torch.save({"model": {}, "preprocess": {"mean": tensor}}, path)
    assert path.stat().st_size < 10_000  # (the zip archive's own overhead is most of it)
    with pytest.raises(CheckpointError, match=r"claims.pt is refused: it holds a tensor (claiming more elements than "
                                              r"the file carries for it|that is not a plain dense one)") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_a_million_opcodes_is_refused_within_a_second(tmp_path):
    path = tmp_path / "flood.pt"
    path.write_bytes(b"\x80\x02" + b"N0" * 10**6 + b"}.")  # NONE, POP: 2 MB of nothing
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"flood.pt is refused: its pickle has more than 200,000 opcodes"):
        checkpoint.load(path)
    assert time.perf_counter() - start < 2


def test_a_sound_checkpoint_still_loads(run):
    state = checkpoint.load(run / "checkpoints" / "last.pt", needs=("model", "optimizer", "step"))
    assert state["step"] > 0 and json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_a_hostile_file_in_torchs_hub_cache_is_refused_in_one_line(tmp_path, monkeypatch):
    """model.pretrained=torchvision:... reads torch's hub cache; on main a hostile cached file printed torch's
    multi-line advice to retry with weights_only=False."""
    import torch

    from runner.config import UserError
    from runner.nets import transfer

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "checkpoints" / "resnet18-f37072fd.pth", "wb") as f:
        pickle.dump(Payload(), f, protocol=2)  # torch.load's own protocol: no warning about another
    with pytest.raises(UserError) as err:
        transfer.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message and "resnet18-f37072fd.pth" in message
    assert not marker.exists()


def _zip_checkpoint(path: Path, program: bytes) -> Path:
    """A torch.save zip archive whose data.pkl is `program`."""
    torch.save({"w": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as out:
        for info, raw in entries:
            out.writestr(info, program if info.filename.endswith("data.pkl") else raw)
    return path


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_hash_bomb_in_torchs_hub_cache_is_refused_at_once(tmp_path):
    """torch.hub would load a cached file with its own loader, with no bound on time: a 1.2 KB archive whose dict
    key is a memo-nested tuple would hang model.pretrained=torchvision:... for ever."""
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    _zip_checkpoint(cached, _tuple_bomb())
    assert cached.stat().st_size < 2_000
    seconds, message = _timed_in_child(f"""
        import os
        os.environ["TORCH_HOME"] = {str(tmp_path)!r}
        from runner.nets import transfer
        call = lambda: transfer.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    """)
    assert seconds < 5
    assert message.startswith(f"CheckpointError: {cached} ") and "\n" not in message
    assert f"delete {cached} to download it again" in message


def _hub_cache_holding(tmp_path, monkeypatch, raw: bytes, prefix: str | None = None) -> Path:
    """torch's hub cache in tmp_path holding `raw` as the file of the weights torchvision:ResNet18_Weights... names,
    which is named (as torchvision names its files) after the first 8 hex digits of its SHA-256, or `prefix`."""
    import hashlib

    import torchvision.models

    prefix = prefix or hashlib.sha256(raw).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/resnet18-{prefix}.pth"
    monkeypatch.setattr(torchvision.models, "get_weight", lambda name: SimpleNamespace(url=url))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_hub(*args, **kwargs):
        raise AssertionError("a file in the cache was handed to torch.hub")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_hub)
    cached = tmp_path / "checkpoints" / f"resnet18-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(raw)
    return cached


def test_a_file_in_torchs_hub_cache_is_read_by_runner_after_its_hash_is_checked(tmp_path, monkeypatch):
    state = {"conv1.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(10)}
    saved = tmp_path / "state.pth"
    torch.save(state, saved)
    _hub_cache_holding(tmp_path / "sound", monkeypatch, saved.read_bytes())
    loaded = transfer.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    replaced = _hub_cache_holding(tmp_path / "replaced", monkeypatch, saved.read_bytes(), prefix="f37072fd")
    with pytest.raises(CheckpointError) as err:
        transfer.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    assert str(err.value) == (f"{replaced} is not the file torchvision publishes (its SHA-256 does not start with "
                              f"f37072fd, as its name says): damaged or replaced; delete {replaced} to download it "
                              "again.")

"""Data: CIFAR-10 read safely from the official "python version" files, cached as uint8 arrays, a synthetic
stand-in that needs no files, the train/val/test split, and device-resident batching.

The whole uint8 data set lives on the training device as one tensor (50,000 x 3 x 32 x 32 bytes = 154 MB), and a
batch is an index slice of it: no DataLoader, no per-image PIL work (uint8 is 4x less to move than float).
"""

import hashlib
import io
import json
import logging
import math
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runner.config import DataError
from runner.config.schema import CIFAR10_FOLDER
from runner.data import checkpoint

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the archive, as published on the CIFAR-10 page
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CACHE_VERSION = 1

log = logging.getLogger("runner")


# ---------------------------------------------------------------------------------------------------------------
# Reading the official pickles without ever running code from them, in bounded time and memory
#
# Nothing read from a file is hashed, compared or formatted before a shallow look at its type and size: a tuple
# nested through the pickle's memo (40 levels, each holding the one below twice) is 200 bytes in the file and 2^40
# steps to hash, compare or print. Messages say what is wrong in words, never with the value.

MAX_MEMBER_BYTES = 64 * 2**20  # an official batch is 31 MB (10,000 images x 3,073 bytes, plus file names)
MAX_ARCHIVE_BYTES = 256 * 2**20  # the official archive unpacks to 178 MB
_MAX_OPCODES = 250_000  # an official batch has 30,108 (a label and a file name per image); 64 MB of images, 65,000
_MAX_MARKS = 16  # MARKs open at once (an official batch: 1); each holds a copy of the stack so far
_MAX_TUPLE = 16  # elements of a tuple (numpy's array state has 5, a dtype's 8)
_MAX_NAME = 100  # characters of a dict key or a global's module and name ('num_cases_per_batch', 'numpy.dtype')
_MAX_INT = 2**63  # CIFAR holds small integers only: a longer one costs time to hash, print or convert
_SCALARS = (int, float, bool, str, bytes, type(None))
_NUMBER_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _Refused(pickle.UnpicklingError):
    """Something no CIFAR batch holds, said in words."""


def _refuse(what: str):
    raise _Refused(what)


def _short(text, chars: int = _MAX_NAME) -> bool:
    """Whether `text` is a str of at most `chars` characters: checked before it is hashed, compared or printed."""
    return type(text) is str and len(text) <= chars


class _Dtype:
    """numpy.dtype as a pickle names it: a plain number type only (no objects, records or sub-arrays)."""

    def __init__(self, spec, align=False, copy=True):
        if not (_short(spec, 4) and spec in _NUMBER_DTYPES):
            _refuse("a numpy dtype other than a plain number type is not part of a CIFAR batch")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        if not (type(state) is tuple and len(state) >= 5 and _short(state[1], 1) and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            _refuse("a numpy dtype with fields or sub-arrays is not part of a CIFAR batch")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """An ndarray under construction: numpy pickles `_reconstruct(ndarray, (0,), 'b')`, then its state."""

    array = None

    def __init__(self, unpickler: "_CifarUnpickler"):
        self.unpickler = unpickler

    def __setstate__(self, state):
        if not (type(state) is tuple and len(state) in (4, 5)):
            _refuse("an array state that numpy does not write")
        shape, dtype, fortran, raw = state[-4:]
        self.array = self.unpickler.array(raw, dtype, shape, "F" if fortran is True else "C")


_NDARRAY = object()  # numpy.ndarray as a pickle names it: an argument of _reconstruct, never called


def _counted(load):
    """An opcode, counted: a file of a million cheap opcodes is refused instead of run for a minute."""
    def counted(self):
        self.opcodes += 1
        if self.opcodes > _MAX_OPCODES:
            _refuse(f"more than {_MAX_OPCODES:,} pickle opcodes, far more than a CIFAR batch has (30,108)")
        load(self)
    return counted


def _checked_ints(load):
    """An opcode that pushes an integer, refusing the long ones."""
    def checked(self):
        load(self)
        value = self.stack[-1]
        if type(value) is int and not -_MAX_INT <= value < _MAX_INT:
            _refuse("an integer longer than 64 bits")
    return checked


def _checked_keys(load):
    """An opcode that sets dict items: keys must be short strings or (bounded) integers, which hash in a few steps; a
    tuple key is refused before the dict would hash it."""
    def checked(self):
        keys = [self.stack[-2]] if load is _BASE[pickle.SETITEM[0]] else self.stack[0::2]  # after MARK: k, v, ...
        if not all(type(k) is int or (type(k) in (str, bytes) and len(k) <= _MAX_NAME) for k in keys):
            _refuse("a dict key other than a short string or an integer")
        load(self)
    return checked


def _checked_tuple(load):
    """An opcode that builds a tuple: at most _MAX_TUPLE plain values, or tuples of them (a shape inside an array's
    state), so that no tuple nests deeper than two levels and anything may hash, compare or print it."""
    def checked(self):
        load(self)
        made = self.stack[-1]
        if len(made) > _MAX_TUPLE:
            _refuse(f"a tuple of more than {_MAX_TUPLE} elements")
        for item in made:
            if type(item) is tuple:
                if not all(type(inner) in _SCALARS for inner in item):
                    _refuse("tuples nested more than two deep")
            elif type(item) in (list, dict):
                _refuse("a list or dict inside a tuple")
    return checked


def _mark(self):
    """MARK, with the marks open at once bounded: each one keeps the stack below it (a flood of them fills memory)."""
    if len(self.metastack) >= _MAX_MARKS:
        _refuse(f"more than {_MAX_MARKS} open MARKs, far more than a CIFAR batch nests")
    _BASE[pickle.MARK[0]](self)


def _build(self):
    """BUILD sets the state of the array and dtype stand-ins only (on anything else it would set attributes)."""
    if type(self.stack[-2]) not in (_Array, _Dtype):
        _refuse(f"setting the state of a {type(self.stack[-2]).__name__}")
    _BASE[pickle.BUILD[0]](self)


class _Opcodes(dict):
    def __missing__(self, opcode: int):
        _refuse(f"pickle opcode {bytes([opcode])!r} is not used by a CIFAR batch")


_BASE = pickle._Unpickler.dispatch
_OPCODES = _Opcodes({op[0]: _BASE[op[0]] for op in (
    pickle.PROTO, pickle.FRAME, pickle.STOP, pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.NONE,
    pickle.NEWTRUE, pickle.NEWFALSE, pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.FLOAT, pickle.BINFLOAT,
    pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.BINBYTES, pickle.SHORT_BINBYTES,
    pickle.BINBYTES8, pickle.BYTEARRAY8, pickle.UNICODE, pickle.BINUNICODE, pickle.SHORT_BINUNICODE,
    pickle.BINUNICODE8, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.LIST, pickle.APPEND, pickle.APPENDS,
    pickle.EMPTY_DICT, pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.REDUCE, pickle.GET, pickle.BINGET,
    pickle.LONG_BINGET, pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE)})
_OPCODES.update({op[0]: _checked_ints(_BASE[op[0]]) for op in (pickle.INT, pickle.LONG, pickle.LONG1, pickle.LONG4)})
_OPCODES.update({op[0]: _checked_keys(_BASE[op[0]]) for op in (pickle.SETITEM, pickle.SETITEMS, pickle.DICT)})
_OPCODES.update({op[0]: _checked_tuple(_BASE[op[0]]) for op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2,
                                                                  pickle.TUPLE3)})
_OPCODES[pickle.MARK[0]] = _mark
_OPCODES[pickle.BUILD[0]] = _build
_OPCODES = _Opcodes({op: _counted(load) for op, load in _OPCODES.items()})


class _CifarUnpickler(pickle._Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, short tuples, strings, bytes, small ints, floats and plain
    number arrays, in time and memory bounded by the file's size.

    A pickle can name any importable callable and have it called on load; refusing every global except the few
    that rebuild an ndarray (each replaced by a checked stand-in) makes loading a hostile file fail instead of
    executing it. The opcode table is Python's own pickle implementation's, cut down to the opcodes a CIFAR batch
    uses (no sets, no objects built by their class, no extension codes or persistent ids), each counted. The
    stand-ins copy bytes (latin1 strings into bytes, bytes into arrays): what they copy in all is bounded by twice the
    file's size, so that a memo reference used over and over cannot multiply it.
    """

    dispatch = _OPCODES

    def __init__(self, raw: bytes):
        self.file = io.BytesIO(raw)
        super().__init__(self.file, encoding="latin1")
        self.opcodes = 0
        self.copy_budget = 2 * len(raw) + 2**16  # bytes the stand-ins may still copy
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self.reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self.reconstruct,
            ("numpy.core.numeric", "_frombuffer"): self.frombuffer,
            ("numpy._core.numeric", "_frombuffer"): self.frombuffer,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _Dtype,
            # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(str, "latin1"): a pure conversion
            ("_codecs", "encode"): self.latin1,
        }

    def find_class(self, module: str, name: str):
        if not (_short(module) and _short(name)):
            _refuse("a global with a name longer than any module's")
        if (module, name) not in self.allowed:
            _refuse(f"refused to load global '{module}.{name}': not part of a CIFAR batch")
        return self.allowed[(module, name)]

    def copying(self, size: int) -> None:
        self.copy_budget -= size
        if self.copy_budget < 0:
            _refuse("it copies its bytes over and over, to more than twice the file's size")

    def latin1(self, text, encoding):
        """_codecs.encode as protocol-2 pickles use it (bytes written as a latin1 str); any other codec is refused
        (hex and friends grow their input: chained, they would fill the memory)."""
        if not (type(text) is str and _short(encoding, 16) and encoding in ("latin1", "latin-1")):
            what = repr(encoding) if _short(encoding, 16) else "another codec"
            _refuse(f"_codecs.encode with {type(text).__name__} and {what} is not part of a CIFAR batch")
        self.copying(len(text))
        return text.encode("latin1")

    def reconstruct(self, subtype, shape, dtype):
        if subtype is not _NDARRAY:
            _refuse("_reconstruct of something other than numpy.ndarray")
        return _Array(self)

    def frombuffer(self, buf, dtype, shape, order):
        """numpy.core.numeric._frombuffer, as protocol 5 pickles an array."""
        out = _Array(self)
        out.array = self.array(buf, dtype, shape, order)
        return out

    def array(self, raw, dtype, shape, order: str) -> np.ndarray:
        """The ndarray a pickle describes, built only once its shape and dtype are checked against the bytes the
        file really holds (so a claimed shape allocates nothing beyond the file's own size)."""
        if type(raw) is str:
            self.copying(len(raw))
            raw = raw.encode("latin1")  # Python 2's pickles (the official files) hold the bytes as a str
        if not (type(raw) in (bytes, bytearray) and type(dtype) is _Dtype and type(shape) is tuple
                and len(shape) <= 4 and all(type(n) is int and n >= 0 for n in shape) and _short(order, 1)
                and order in ("C", "F")):
            _refuse("an array that is not a plain number array")
        if math.prod(shape) * dtype.dtype.itemsize != len(raw):
            _refuse(f"an array of shape {shape} whose {len(raw):,} bytes do not fill it")
        self.copying(len(raw))
        return np.frombuffer(raw, dtype.dtype).reshape(shape, order=order).copy()


def _refusal(source: str, problem: str) -> DataError:
    return DataError(f"{source}: {problem}; replace it with the official file ({CIFAR10_URL}), or point data.root= "
                     "at a good copy.")


def _unpickle(raw: bytes, source: str) -> dict:
    """A CIFAR pickle's top-level dict, with its arrays built; never runs code, time and memory bounded by the
    file's size (which is bounded before it is read)."""
    if len(raw) > MAX_MEMBER_BYTES:
        raise _refusal(source, f"{len(raw):,} bytes, more than any CIFAR-10 file ({MAX_MEMBER_BYTES:,})")
    unpickler = _CifarUnpickler(raw)
    try:
        obj = unpickler.load()
    except Exception as err:  # torn, hostile or corrupt: Python's own messages may quote the file, so not shown
        if unpickler.file.tell() >= len(raw):  # it ran out of bytes before the end of the pickle
            problem = "it ends early: truncated, a download or copy that never finished"
        else:
            problem = str(err) if type(err) is _Refused else \
                f"malformed: {type(err).__name__} at byte {unpickler.file.tell():,}"
        raise _refusal(source, f"not a valid CIFAR-10 pickle ({problem})") from None
    finally:  # what it built so far, freed now (the array stand-ins refer back to the unpickler)
        unpickler.memo, unpickler.stack, unpickler.metastack = {}, [], []
    if type(obj) is not dict:
        raise _refusal(source, f"expected a dict, found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if type(value) is _Array:
            if value.array is None:
                raise _refusal(source, f"its {key!r} is an array without contents")  # (keys are short: checked)
            value = value.array
        out[key.decode("latin1") if type(key) is bytes else key] = value
    return out


def _describe(value) -> str:
    """A value in a few words, never its contents: a hostile value can be huge, or nested so that printing it
    never ends."""
    if type(value) is np.ndarray:
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}" + (f" of length {len(value):,}" if type(value) in (list, tuple, dict) else "")


def _labels(labels, count: int, source: str) -> np.ndarray:
    """'labels' as int64, after checking, element by element and never recursing, that it is a flat list (or 1-D
    integer array) of count integers in 0..9: a nested list is refused before numpy could unroll it."""
    if type(labels) is np.ndarray and labels.ndim == 1 and labels.dtype.kind in "iu":
        if len(labels) != count:
            raise _refusal(source, f"{len(labels):,} labels for {count:,} images")
        labels = labels.tolist()
    if type(labels) is not list:
        raise _refusal(source, f"'labels' must be a flat list of integers 0..9, found {_describe(labels)}")
    if len(labels) != count:
        raise _refusal(source, f"{len(labels):,} labels for {count:,} images")
    for i, label in enumerate(labels):
        if type(label) is not int or not 0 <= label <= 9:
            found = label if type(label) is int else _describe(label)  # (an int pushed is at most 64 bits)
            raise _refusal(source, f"labels must lie in 0..9 (a flat list of integers), found {found} at position {i}")
    return np.array(labels, dtype=np.int64)


def parse_batch(raw: bytes, source: str, expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file's bytes -> images (N, 3, 32, 32) uint8 and labels (N,) int64, structure checked."""
    batch = _unpickle(raw, source)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        found = [repr(k) for k, _ in zip(batch, range(10), strict=False)]  # (keys are short: checked)
        raise _refusal(source, f"missing key(s) {missing}; found {len(batch)}: {', '.join(found) or 'none'}")
    data = batch["data"]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _refusal(source, f"'data' must be a uint8 array of shape (N, 3072), found {_describe(data)}")
    labels = _labels(batch["labels"], len(data), source)
    if expected_count is not None and len(data) != expected_count:
        raise _refusal(source, f"{len(data)} images, expected {expected_count} (batches.meta num_cases_per_batch)")
    return data.reshape(-1, 3, 32, 32), labels


_NAMES = (*TRAIN_BATCHES, TEST_BATCH, "batches.meta")


def _folder_files(root: Path) -> list[Path]:
    """The files of the folder layout, each checked to be there and of a size a CIFAR-10 file can have."""
    folder = root / CIFAR10_FOLDER
    absent = [n for n in _NAMES if not (folder / n).is_file()]
    if absent:
        raise DataError(f"{folder}: missing {', '.join(absent)}; put the complete official "
                        f"'{CIFAR10_FOLDER}' folder there (or the '{CIFAR10_ARCHIVE}' archive in {root})")
    for name in _NAMES:
        size = (folder / name).stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise _refusal(str(folder / name), f"{size:,} bytes, more than any CIFAR-10 file ({MAX_MEMBER_BYTES:,})")
    return [folder / n for n in _NAMES]


def _read_members(root: Path) -> tuple[dict[str, bytes], str]:
    """The raw bytes of every CIFAR-10 file, from the folder if present, else from the archive (never extracted);
    each file's size is checked before it is read, and the archive is read no further than its official size."""
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        return {p.name: p.read_bytes() for p in _folder_files(root)}, str(folder)
    archive = root / CIFAR10_ARCHIVE
    members = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.offset > MAX_ARCHIVE_BYTES:
                    raise DataError(f"{archive}: unpacks to more than {MAX_ARCHIVE_BYTES:,} bytes, far more than the "
                                    "official archive; delete it and run again to re-download")
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in _NAMES:
                    if member.size > MAX_MEMBER_BYTES:
                        raise _refusal(f"{archive}/{member.name}", f"{member.size:,} bytes, more than any CIFAR-10 "
                                       f"file ({MAX_MEMBER_BYTES:,})")
                    members[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: cannot read the archive ({err}); delete it and run again to re-download") from err
    absent = [n for n in _NAMES if n not in members]
    if absent:
        raise DataError(f"{archive}: the archive lacks {', '.join(absent)}")
    return members, str(archive)


def read_cifar10(root: Path) -> dict[str, np.ndarray]:
    """Decode and check CIFAR-10 under root: {'train_x', 'train_y', 'test_x', 'test_y'} as uint8 / int64 arrays."""
    raw, where = _read_members(root)
    meta = _unpickle(raw["batches.meta"], f"{where}/batches.meta")
    per_batch = meta.get("num_cases_per_batch")
    if type(per_batch) is not int or per_batch <= 0:
        found = per_batch if type(per_batch) is int else _describe(per_batch)
        raise _refusal(f"{where}/batches.meta", f"'num_cases_per_batch' must be a positive integer, found {found}")
    train = [parse_batch(raw[n], f"{where}/{n}", per_batch) for n in TRAIN_BATCHES]
    test_x, test_y = parse_batch(raw[TEST_BATCH], f"{where}/{TEST_BATCH}", per_batch)
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
    }


def _download_into(root: Path) -> None:
    """Download the archive into root, creating root when it does not exist (and saying so: a typo in data.root
    shows in the log); a failed download removes the folders it created."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    if created:
        log.info("data.root=%s does not exist: creating it to download CIFAR-10 (163 MB) into it (data.download=true)",
                 root)
    try:
        _download(root)
    except DataError:
        (root / CIFAR10_ARCHIVE).unlink(missing_ok=True)
        for folder in created:  # the deepest first; only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


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
    paths = _folder_files(root) if (root / CIFAR10_FOLDER).is_dir() else [root / CIFAR10_ARCHIVE]
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
        _download_into(root)
    fingerprint = _fingerprint(root)
    path = _cache_path(root, cache_dir)
    arrays = _load_cache(path, fingerprint)
    if arrays is None:
        arrays = read_cifar10(root)
        _save_cache(path, fingerprint, arrays)
        if path.is_file():
            log.info("decoded CIFAR-10 once into %s (%.0f MB), which later runs load in a fraction of a second; "
                     "data.cache_dir=<dir> (or XDG_CACHE_HOME) puts it elsewhere, and deleting it is safe",
                     path, path.stat().st_size / 1e6)
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data: CIFAR-shaped, learnable, made from a seed

def make_synthetic(train_examples: int, test_examples: int, noise: float, seed: int, num_classes: int = 10,
                   difficulty: float = 0.0, label_noise: float = 0.0):
    """Each class is a smooth random prototype (4x4 noise upsampled to 32x32); each image is its class prototype,
    rolled by up to 3 pixels, contrast-scaled by 0.6..1.4, plus Gaussian pixel noise of std `noise` (0..255 scale).

    difficulty in [0, 1] makes the task harder the way real images are hard (0: the easy task above, unchanged):
    each class becomes a mixture of 1 + round(3 * difficulty) prototypes (a model must learn several looks per
    class), and every prototype is pulled toward one shared image by 0.8 * difficulty (classes look alike, so
    the pixel noise hides more of what tells them apart). label_noise: this fraction of the *training* labels is
    replaced by a random class (a net that memorizes them overfits: what regularization is for); test labels stay
    clean."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (num_classes, 3, 4, 4)).astype(np.float32))
    protos = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False).numpy()
    hard = np.random.default_rng([seed, 1])  # its own stream: difficulty 0 draws exactly what it always drew
    modes = 1 + round(3 * difficulty)
    if difficulty > 0:
        extra = torch.from_numpy(hard.normal(0.0, 1.0, (num_classes * (modes - 1) + 1, 3, 4, 4)).astype(np.float32))
        extra = torch.nn.functional.interpolate(extra, size=(32, 32), mode="bicubic", align_corners=False).numpy()
        shared, extra = extra[-1:], extra[:-1]
        scale = protos.std()
        protos = np.concatenate([protos, extra])  # prototype k + num_classes * m is class k's m-th look
        protos = (1 - 0.8 * difficulty) * protos + 0.8 * difficulty * shared
        protos *= scale / protos.std(axis=(1, 2, 3), keepdims=True)  # the easy task's contrast

    def sample(n, flip_labels=0.0):
        y = rng.integers(0, num_classes, n)
        look = y + num_classes * hard.integers(0, modes, n) if modes > 1 else y
        x = protos[look] * rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
        shifts = rng.integers(-3, 4, (n, 2))
        for dy in range(-3, 4):  # roll per shift value: 49 vectorized groups instead of n Python iterations
            for dx in range(-3, 4):
                sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                x[sel] = np.roll(x[sel], (dy, dx), axis=(2, 3))
        x = 128.0 + 50.0 * x + rng.normal(0.0, noise, x.shape).astype(np.float32)
        if flip_labels > 0:
            flip = hard.random(n) < flip_labels
            y = np.where(flip, hard.integers(0, num_classes, n), y)
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = sample(train_examples, label_noise)
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


# The arrays this process loaded last, by what they were made from: a sweep's trials run one after another in one
# process (Hydra's basic launcher) and each would read the same 184 MB cache file again (plus its checksums). One
# entry, read-only (a run that changed them in place would change the next trial's data).
_LOADED: dict = {}


def _arrays_key(cfg, cache_dir: Path | None) -> str | None:
    """What the raw arrays are made from (never the split keys): the synthetic generator's settings, or CIFAR-10's
    files with their sizes and modification times. None when the files are not there yet (to be downloaded)."""
    if cfg.name == "synthetic":
        return json.dumps(["synthetic", cfg.train_examples, cfg.test_examples, cfg.noise, cfg.generator_seed,
                           cfg.num_classes, cfg.get("difficulty", 0.0), cfg.get("label_noise", 0.0)])
    root = Path(cfg.root)
    if not (root / CIFAR10_FOLDER).is_dir() and not (root / CIFAR10_ARCHIVE).is_file():
        return None
    return json.dumps(["cifar10", str(root.resolve()), str(cache_dir), _fingerprint(root)])


def load_arrays(cfg) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The raw train/test arrays the data config names (read-only), and the class names. The same data loaded again
    by this process (the next trial of a sweep) is the arrays already in memory."""
    cache_dir = None if cfg.name == "synthetic" else Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    key = _arrays_key(cfg, cache_dir)
    if key is not None and key in _LOADED:
        return _LOADED[key]
    if cfg.name == "synthetic":
        arrays = make_synthetic(cfg.train_examples, cfg.test_examples, cfg.noise, cfg.generator_seed, cfg.num_classes,
                                cfg.get("difficulty", 0.0), cfg.get("label_noise", 0.0))
        classes = tuple(f"class_{i}" for i in range(cfg.num_classes))
    else:
        arrays, classes = load_cifar10(Path(cfg.root), cache_dir, cfg.download), CIFAR10_CLASSES
    for array in arrays.values():
        array.setflags(write=False)
    _LOADED.clear()
    _LOADED[key or _arrays_key(cfg, cache_dir)] = arrays, classes
    return arrays, classes


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
    if cfg.get("label_noise", 0.0) and cfg.name != "synthetic":  # the synthetic task draws its noise as it is made
        arrays = with_label_noise(arrays, float(cfg.label_noise), len(classes), cfg.split_seed)
    return split(arrays, classes, cfg.val_size, cfg.train_size, cfg.split_seed, device,
                 train_half=cfg.train_half, per_class=cfg.per_class)


def with_label_noise(arrays: dict[str, np.ndarray], fraction: float, num_classes: int, seed: int) -> dict:
    """A copy of `arrays` whose training labels (the validation hold-out's too) are each replaced, with probability
    `fraction`, by a class drawn at random (data.label_noise; seeded by data.split_seed); test labels stay clean."""
    rng = np.random.default_rng([seed, 2])
    y = arrays["train_y"]
    flip = rng.random(len(y)) < fraction
    return {**arrays, "train_y": np.where(flip, rng.integers(0, num_classes, len(y)), y).astype(y.dtype)}


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
        if train_size > len(train_idx):
            raise DataError(f"data.train_size={train_size} is more than this task has: {len(train_idx)} training "
                            f"images after data.classes, data.train_half and the data.val_size={val_size} hold-out; "
                            f"set data.train_size={len(train_idx)} or lower (or null: all of them).")
        train_idx = train_idx[:train_size]
    if per_class is not None:
        labels = arrays["train_y"][train_idx]
        picked = [train_idx[labels == c][:per_class] for c in range(len(classes))]
        short = [classes[c] for c, idx in enumerate(picked) if len(idx) < per_class]
        if short:
            raise DataError(f"data.per_class={per_class}: fewer training images than that for {', '.join(short)} "
                            "after the validation hold-out; lower data.per_class or data.val_size.")
        train_idx = np.sort(np.concatenate(picked))

    def put(a):  # a copy of a read-only array (load_arrays'): the run may not change what the next one loads
        return torch.from_numpy(np.ascontiguousarray(a) if a.flags.writeable else a.copy()).to(device)

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

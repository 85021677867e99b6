"""Atomic files: a crash, a kill or a full disk mid-write leaves the previous file intact, never half a file. And the
one way every checkpoint is read (resume, model.pretrained, the ensemble command, snapshots): weights_only, bounded
in time, and any failure one CheckpointError line naming the file and what is wrong with it.

torch is imported only by save/load, so the sweeper can write its files through here without paying for it."""

import json
import os
import tempfile
from pathlib import Path

from runner.config import CheckpointError


def atomic_write(path: Path, write) -> None:
    """Write through `write(file)` to a temporary file beside `path`, flush it to disk, then rename over `path`
    (rename is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(obj, path: Path) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive holding data.pkl and the tensors
_MAX_PICKLE_BYTES = 64 * 2**20  # a checkpoint's pickle holds the structure only (the tensors lie beside it)
_MAX_ELEMENTS = 10**7  # containers and values in a checkpoint, shared references counted each time (a ResNet's: 10^4)
_MAX_OPCODES = 200_000  # in its pickles (a small run's last.pt: 2,400); scanning them takes under a second
_LEGACY_PICKLES = 5  # torch.save's format before 1.6: magic number, version, sizes, the object, its storage keys
_MARK = object()


def load(path: Path, map_location="cpu", needs: tuple[str, ...] = (), remedy: str = ""):
    """Load a checkpoint without unpickling arbitrary objects (weights_only: tensors, containers, numbers), in time
    bounded by its size. Every way it can fail is one CheckpointError naming the file: missing, damaged (truncated?),
    hostile (it asks to run code: refused, and loading it otherwise is never suggested), not a PyTorch file, or
    without the keys `needs` (a runner checkpoint's "model", "optimizer", ...). `remedy` ends the message: what the
    caller's user can do."""
    import torch

    path = Path(path)

    def fail(problem: str):
        raise CheckpointError(f"{path} {problem}" + (f"; {remedy}" if remedy else "."))

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        fail("does not exist")
    except IsADirectoryError:
        fail("is a directory, not a checkpoint file")
    except OSError as err:
        fail(f"cannot be read ({err.strerror or err})")
    if not head:
        fail("is empty (damaged: a disk fault, or a copy that never finished)")
    if head != _ZIP and head[:1] != b"\x80":  # the legacy format, and plain pickles, start with PROTO
        kind = "text" if _is_text(path) else "another kind of file"
        fail(f"is not a PyTorch checkpoint (it is {kind}): give a file written by torch.save, e.g. a run's "
             "checkpoints/last.pt")
    problem = _scan(path, head == _ZIP)
    if problem:
        fail(problem)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises, the file is unusable: say which way, in a line
        fail(_diagnose(err))
    if _elements(obj) > _MAX_ELEMENTS:
        fail(f"holds more than {_MAX_ELEMENTS:,} nested values, far more than any checkpoint: refused")
    problem = _tensor_problem(obj)
    if problem:
        fail(f"is refused: {problem}")
    if needs:
        if not isinstance(obj, dict):
            fail(f"is not a runner checkpoint (it holds a {type(obj).__name__}, not a dict with {', '.join(needs)})")
        absent = [k for k in needs if k not in obj]
        if absent:
            fail(f"is not a runner checkpoint of this kind: it lacks {', '.join(absent)}")
    return obj


def check_fits(path: Path, state: dict, own: dict, remedy: str = "") -> None:
    """Refuse, in one line, a loaded checkpoint whose parts do not fit the objects they would be loaded into. `own`
    is what those objects save now (a run's state_dict): each state dict of tensors (a model's, a preprocessing's)
    must hold the same names with the same shapes; an optimizer's state the same parameter groups and sizes."""
    import torch

    def fail(problem: str):
        raise CheckpointError(f"{path} {problem}" + (f"; {remedy}" if remedy else "."))

    for part, mine in own.items():
        theirs = state.get(part)
        if isinstance(mine, dict) and mine and all(isinstance(v, torch.Tensor) for v in mine.values()):
            if not (isinstance(theirs, dict) and all(type(k) is str for k in theirs)):
                fail(f"does not fit this run: its {part!r} is not a state dict (names -> tensors)")
            absent, extra = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
            if absent or extra:
                fail(f"was made by another architecture: its {part!r} lacks {len(absent)} of this run's tensors "
                     f"({', '.join(absent[:3]) or 'none'}) and has {len(extra)} this run has not "
                     f"({', '.join(k[:100] for k in extra[:3]) or 'none'})")
            shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
                      if not isinstance(theirs[k], torch.Tensor) or theirs[k].shape != v.shape]
            if shapes:
                fail(f"was made by another architecture: {len(shapes)} of its {part!r} tensors have other shapes "
                     f"({'; '.join(shapes[:2])})")
        elif part == "optimizer" and isinstance(mine, dict):
            sizes = [len(g["params"]) for g in mine.get("param_groups", [])]
            try:
                saved = [len(g["params"]) for g in theirs["param_groups"]]
            except (TypeError, KeyError):
                fail("does not fit this run: its optimizer state has no parameter groups")
            if saved != sizes:
                fail(f"does not fit this run: its optimizer holds parameter groups of {saved} tensors, this run's "
                     f"{sizes} (another model, optimizer or regularization)")


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        start = f.read(512)
    try:
        start.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _diagnose(err: Exception) -> str:
    """torch.load's failure in a few words. Its own message for a refused global is several lines of advice to load
    with weights_only=False, which would run the file's code: never repeated here."""
    import pickle
    import re

    reason = str(err.__context__ or err) if isinstance(err, pickle.UnpicklingError) else str(err)
    hostile = re.search(r"GLOBAL ([\w.]{1,100})", reason)
    if hostile:
        return (f"is refused: loading it would run code ({hostile.group(1)}), which no checkpoint needs (runner loads "
                "only tensors and plain values); do not use this file")
    first = reason.strip().splitlines()[0][:160] if reason.strip() else type(err).__name__
    return f"is damaged (truncated?): it cannot be read as a checkpoint ({first})"


def _scan(path: Path, is_zip: bool) -> str | None:
    """What is wrong with the checkpoint's pickles, read without building anything (None: nothing found): too large,
    malformed, too many opcodes, asking to run code (a plain pickle's globals), or building a tuple whose hash would
    visit more elements than any checkpoint holds (a tuple nested through the pickle's memo is tiny in the file, 2^40
    steps to hash as a dict key). The legacy format's pickles (before torch 1.6) are each scanned, one after the
    other; nothing from the file is quoted in the answer."""
    import zipfile

    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return "is not a PyTorch checkpoint (a zip archive without data.pkl)"
                info = archive.getinfo(names[0])
                if info.file_size > _MAX_PICKLE_BYTES:
                    return f"is refused: its data.pkl is {info.file_size:,} bytes, far more than any checkpoint's"
                program = archive.read(info)
        else:
            with open(path, "rb") as f:
                program = f.read(_MAX_PICKLE_BYTES)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        return f"is damaged (truncated?): it cannot be read ({type(err).__name__})"
    budget, start = [_MAX_OPCODES], 0
    for _ in range(1 if is_zip else _LEGACY_PICKLES):
        problem, start = _scan_pickle(program, start, is_zip, budget)
        if problem or start >= len(program) or program[start] != 0x80:  # (each pickle starts with PROTO)
            return problem
    return None


def _scan_pickle(program: bytes, start: int, is_zip: bool, budget: list) -> tuple[str | None, int]:
    """_scan of the pickle at `start` in `program`: (what is wrong or None, where the next one starts). budget[0]: the
    opcodes still allowed."""
    import io
    import pickletools

    stack, memo, largest, names = [], {}, 0, []
    stream = io.BytesIO(program)
    stream.seek(start)
    try:
        for op, arg, _ in pickletools.genops(stream):
            budget[0] -= 1
            if budget[0] < 0:
                return (f"is refused: its pickle has more than {_MAX_OPCODES:,} opcodes, far more than any "
                        "checkpoint's"), len(program)
            name = op.name
            if isinstance(arg, str):
                names = [*names[-1:], arg[:200]]  # the module and name a STACK_GLOBAL takes
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "MARK":
                stack.append(_MARK)
            else:
                if not is_zip and name in ("GLOBAL", "STACK_GLOBAL", "INST"):
                    # a plain pickle naming a callable: torch would misread it as the legacy format
                    what = (arg.replace(" ", ".") if arg else ".".join(names))[:100]
                    if what.split(".")[0] not in ("torch", "collections"):
                        return (f"is refused: loading it would run code ({what}), which no checkpoint needs (runner "
                                "loads only tensors and plain values); do not use this file"), len(program)
                before = op.stack_before
                popped = []
                if pickletools.markobject in before:
                    mark = len(stack) - 1 - stack[::-1].index(_MARK)
                    popped = stack[mark + 1:]
                    del stack[mark - before.index(pickletools.markobject):]
                else:
                    popped = stack[len(stack) - len(before):] if before else []
                    del stack[len(stack) - len(before):]
                    if len(popped) < len(before):
                        raise IndexError("stack underflow")
                # tuples and frozensets are hashed whole; anything else is counted as one element
                size = 1 + sum(popped) if name.startswith("TUPLE") or name == "FROZENSET" else 1
                largest = max(largest, min(size, _MAX_ELEMENTS + 1))
                stack.extend([min(size, _MAX_ELEMENTS + 1)] * len(op.stack_after))
    except (ValueError, IndexError, KeyError) as err:
        torn = stream.tell() >= len(program)
        return ("is damaged (truncated?): its pickle ends early" if torn else
                f"is damaged: its pickle is malformed ({type(err).__name__} at byte {stream.tell():,})"), len(program)
    if largest > _MAX_ELEMENTS:
        return f"is refused: it builds a tuple of more than {_MAX_ELEMENTS:,} nested elements (a pickle bomb)", 0
    return None, stream.tell()


def _tensor_problem(obj) -> str | None:
    """What is wrong with the tensors of a loaded checkpoint: a tensor whose claimed shape has more elements than its
    storage holds (a stride of 0 makes 4 bytes in the file a view of 2^31 elements, which the first copy of it would
    allocate), one on the meta device (a shape without data, allocated when moved), or one of another layout than a
    plain dense tensor. None: all are plain views of the data the file carries."""
    import torch

    seen, todo = set(), [obj]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
        elif isinstance(node, torch.Tensor):
            if node.layout is not torch.strided or node.is_meta:
                return "it holds a tensor that is not a plain dense one (sparse, or on the meta device)"
            if node.numel() > node.untyped_storage().nbytes() // max(node.element_size(), 1):
                return "it holds a tensor claiming more elements than the file carries for it"
    return None


def _elements(obj) -> int:
    """The values of a loaded checkpoint, each shared reference counted each time (memoized: time linear in the
    objects really there), capped just above _MAX_ELEMENTS; a structure holding itself counts as too many."""
    counted, open_ = {}, set()

    def count(node) -> int:
        key = id(node)
        if key in counted:
            return counted[key]
        if key in open_:
            return _MAX_ELEMENTS + 1
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple, set)) else ()
        open_.add(key)
        total = 1
        for child in children:
            total = min(total + count(child), _MAX_ELEMENTS + 1)
            if total > _MAX_ELEMENTS:
                break
        open_.discard(key)
        counted[key] = total
        return total

    try:
        return count(obj)
    except RecursionError:
        return _MAX_ELEMENTS + 1


def write_json(obj, path: Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))

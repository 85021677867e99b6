"""Atomic files: a crash, a kill or a full disk mid-write leaves the previous file intact, never half a file.

torch is imported only by save/load, so the sweeper can write its files through here without paying for it."""

import json
import os
import tempfile
from pathlib import Path


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


def load(path: Path, map_location="cpu"):
    """Load a checkpoint without unpickling arbitrary objects (weights_only: tensors, containers, numbers)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def write_json(obj, path: Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))

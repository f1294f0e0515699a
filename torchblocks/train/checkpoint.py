"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``, checked.

A checkpoint is a plain dict of tensors, numbers, strings and lists (nothing that needs pickle's
code execution): the model's state dict (keys of the unwrapped, unconverted model), the
optimizer's, the number of finished epochs, the per-epoch history, the CPU random state and the
settings the run was started with. Resuming checks the settings first and changes nothing
(model, optimizer, files) when the checkpoint does not fit.
"""
import contextlib
import os
import tempfile
from typing import Any, Callable, Dict, IO, Mapping

import torch
from torch import nn

from .._checks import first_line

FORMAT = "torchblocks.train"
VERSION = 1
_KEYS = ("format", "version", "settings", "epoch", "history", "model", "optimizer", "rng_state")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never half of one; on failure the temporary file is
    removed and ``path`` is untouched.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: folder {directory!r} does not exist")
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def save(path: str, checkpoint: Mapping[str, Any]) -> None:
    """Write ``checkpoint`` (built by :func:`make`) to ``path`` atomically."""
    write_atomic(path, lambda f: torch.save(dict(checkpoint), f))


def make(settings: Mapping[str, Any], epoch: int, history: list, model: nn.Module,
         optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": dict(settings),
        "epoch": epoch,
        "history": [dict(row) for row in history],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
    }


def load(path: str) -> Dict[str, Any]:
    """Read and structurally check a checkpoint; ``FileNotFoundError``/``ValueError`` naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} to resume from")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises pickle, zip and runtime errors of many kinds
        raise ValueError(
            f"checkpoint {path!r} is corrupt or not a torchblocks training checkpoint ({first_line(error)})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a torchblocks training checkpoint (no format={FORMAT!r} entry)")
    if checkpoint.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path!r} has version {checkpoint.get('version')!r}; this torchblocks reads version {VERSION}"
        )
    absent = [key for key in _KEYS if key not in checkpoint]
    if absent:
        raise ValueError(f"checkpoint {path!r} is incomplete: no {', '.join(absent)}")
    return checkpoint


def check_settings(checkpoint: Mapping[str, Any], settings: Mapping[str, Any], path: str) -> None:
    """Refuse to resume with settings that would not continue the same run (epochs may differ)."""
    saved = checkpoint["settings"]
    for key, value in settings.items():
        if saved.get(key) != value:
            raise ValueError(
                f"checkpoint {path!r} was written with {key}={saved.get(key)!r}; this run has "
                f"{key}={value!r} (resume with the same settings, or start afresh without --resume)"
            )


def _few(keys: list) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _check_model_state(saved: Mapping[str, Any], model: nn.Module, path: str) -> None:
    expected = model.state_dict()
    if not isinstance(saved, Mapping) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise ValueError(f"checkpoint {path!r} holds no model state dict")
    problems = []
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    for key, value in expected.items():
        if key in saved and saved[key].shape != value.shape:
            problems.append(f"{key} has shape {tuple(saved[key].shape)}, the model {tuple(value.shape)}")
            break
    if problems:
        raise ValueError(f"checkpoint {path!r} does not fit the model: {'; '.join(problems)}")


def restore(checkpoint: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, path: str) -> None:
    """Load the model's and optimizer's states, all or nothing; ``ValueError`` if they do not fit."""
    _check_model_state(checkpoint["model"], model, path)
    if not isinstance(checkpoint["rng_state"], torch.Tensor) or checkpoint["rng_state"].dtype != torch.uint8:
        raise ValueError(f"checkpoint {path!r} holds no valid random state")
    model_state = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        raise ValueError(f"checkpoint {path!r} does not fit this model/optimizer: {first_line(error)}") from None
    torch.set_rng_state(checkpoint["rng_state"])

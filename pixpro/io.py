"""Atomic writes: a killed or failed run never leaves a file or folder that looks complete.

A stage writes all its outputs through `stage_outputs()`: each goes to a temporary sibling of its
destination, and they move into place together once the stage has succeeded, so a stage that
stops leaves its previous outputs as they were (or none), never a mix of old and new.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pixpro.errors import PixproError


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; returns the ones created, outermost first. Raises
    a one-line PixproError when a file stands where a folder is needed, or creating one fails."""
    missing = []
    parent = path.parent
    while not parent.exists():  # False under a file too (NotADirectoryError is swallowed)
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise PixproError(f"cannot write {path}: {parent} is a file, not a folder")
    missing.reverse()
    for folder in missing:
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by another process
            pass
        except OSError as err:
            raise PixproError(f"cannot write {path}: creating {folder} failed ({err.strerror or err})") from None
    return missing


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), fsync, then rename over `path`. The old file survives any failure."""
    path = Path(path)
    make_parents(path)
    if path.is_dir():
        raise PixproError(f"cannot write the file {path}: a folder of that name is in the way")
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise PixproError(f"could not write {path}: {err.strerror or err}; {kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path`, on failure it is removed
    (stage_outputs with one output folder)."""
    with stage_outputs() as outputs:
        yield outputs.folder(path)


@dataclass
class _Staged:
    destination: Path
    tmp: Path  # a sibling of destination, so the final move is a rename within one file system
    aside: Path  # where the previous output waits while the new one moves in
    moved_aside: bool = False


class StagedOutputs:
    """The outputs of one stage run, written to temporary siblings (see stage_outputs)."""

    def __init__(self) -> None:
        self._staged: list[_Staged] = []
        self._created: list[Path] = []  # parent folders made for the outputs, removed on failure

    def file(self, path: str | Path) -> Path:
        """Register the output file `path`; returns the temporary path to write instead."""
        return self._stage(Path(path), folder=False)

    def folder(self, path: str | Path) -> Path:
        """Register the output folder `path`; returns an empty temporary folder to fill instead.
        On commit it replaces `path` whole, so no file of an earlier run lingers in it."""
        return self._stage(Path(path), folder=True)

    def _stage(self, path: Path, folder: bool) -> Path:
        if any(s.destination == path for s in self._staged):
            raise ValueError(f"{path} is staged twice")
        self._created += make_parents(path)
        kind = "folder" if folder else "file"
        if path.exists() and path.is_dir() != folder:
            other = "file" if folder else "folder"
            raise PixproError(f"cannot write the {kind} {path}: a {other} of that name is in the way")
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed run, never an output
            _remove(stale)
        staged = _Staged(path, _tmp_sibling(path), path.with_name(f".{path.name}.old-{os.getpid()}"))
        try:  # made now, so a read-only folder fails before the stage does any work
            staged.tmp.mkdir() if folder else staged.tmp.touch()
        except OSError as err:
            raise PixproError(f"cannot write {path}: {err.strerror or err}") from None
        self._staged.append(staged)
        return staged.tmp

    def destination_of(self, written: str | Path | None) -> Path | None:
        """The output that the temporary path `written` (or a file inside it) belongs to, or None."""
        if written is None:
            return None
        written = Path(os.fsdecode(written))
        for staged in self._staged:
            if written == staged.tmp or staged.tmp in written.parents:
                return staged.destination
        return None

    def restate(self, message: str) -> str:
        """`message` with temporary paths replaced by their outputs' paths, and io's claims about a
        previous version made true of the output."""
        for staged in self._staged:
            if str(staged.tmp) in message:
                message = message.replace(str(staged.tmp), str(staged.destination))
                for claim in ("the previous version is intact", "nothing was written"):
                    message = message.replace(claim, _kept(staged.destination))
        return message

    def discard(self) -> None:
        for staged in self._staged:
            _remove(staged.tmp)
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only if still empty
            except OSError:
                pass

    def commit(self) -> None:
        """Move every output into place. The previous outputs are first moved aside, and moved
        back if any rename fails, so the set stays all old or all new."""
        placed = []
        try:
            for staged in self._staged:
                if os.path.lexists(staged.destination):
                    _remove(staged.aside)
                    os.replace(staged.destination, staged.aside)
                    staged.moved_aside = True
            for staged in self._staged:
                os.replace(staged.tmp, staged.destination)
                placed.append(staged)
        except OSError as err:
            for staged in placed:
                _remove(staged.destination)
            for staged in self._staged:
                if staged.moved_aside:
                    os.replace(staged.aside, staged.destination)
            self.discard()
            raise PixproError(f"could not move the outputs into place ({err.strerror or err}: "
                              f"{err.filename}); the previous outputs are intact") from None
        for staged in self._staged:
            if staged.moved_aside:
                _remove(staged.aside)


@contextmanager
def stage_outputs() -> Iterator[StagedOutputs]:
    """Stage all of a stage's outputs and commit them together when the block succeeds.

        with stage_outputs() as outputs:
            metrics_tmp, plots_tmp = outputs.file(metrics), outputs.folder(plots)
            ...  # the work; write only to the temporary paths

    Register the outputs first: a path that cannot be written (under a file, read-only) fails
    before any work. If the block raises, the temporary outputs are removed and the previous
    ones stay as they were; an OSError while writing one of them becomes a one-line PixproError
    naming the output.
    """
    outputs = StagedOutputs()
    try:
        yield outputs
    except OSError as err:
        outputs.discard()
        destination = outputs.destination_of(err.filename) or outputs.destination_of(err.filename2)
        if destination is None:
            raise
        raise PixproError(f"could not write {destination}: {err.strerror or err}; {_kept(destination)}") from None
    except PixproError as err:
        outputs.discard()
        err.args = (outputs.restate(str(err)),)  # the user knows the outputs, not the temporary paths
        raise
    except BaseException:
        outputs.discard()
        raise
    outputs.commit()


def _kept(destination: Path) -> str:
    return "the previous version is intact" if os.path.lexists(destination) else "nothing was written"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()

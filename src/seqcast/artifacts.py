"""Safe, atomic artifacts: JSON + safetensors files with a sha256 manifest; never pickle.

Every file is written under a temporary name in its destination folder and then renamed, so an
interrupted write never leaves a truncated file where a good one was. A model folder is built in a
temporary sibling folder and swapped in whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ArtifactError

MANIFEST = "manifest.json"


def open_temp_sibling(path) -> tuple[int, Path]:
    """A new, exclusive temporary file beside `path`, to be renamed onto it when complete.

    Created with os.open's mode 0o666 so the process umask applies as for a plain open()
    (tempfile.mkstemp would make it private, 0600, and so would every output renamed from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _make_temp_dir_sibling(directory: Path) -> Path:
    """A new empty folder beside `directory` with the umask's usual mode (mkdtemp would make it 0700)."""
    while True:
        staging = directory.with_name(f".{directory.name}.{secrets.token_hex(6)}")
        try:
            staging.mkdir(mode=0o777)
            return staging
        except FileExistsError:
            continue


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    if path.is_dir():  # else the rename's error named the temporary file
        raise ArtifactError(f"{path} is a folder: give the path of a file to write")
    fd, tmp = open_temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_dir(
    directory, *, json_files: dict[str, dict], tensors: dict[str, torch.Tensor], replace: bool = False
) -> Path:
    """Write `name.json` files and `weights.safetensors` plus a manifest, replacing `directory` whole
    (write_bundle_dir says when)."""

    def weights(staging: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / "weights.safetensors"))

    return write_bundle_dir(directory, json_files=json_files, build=weights, replace=replace)


def _swap_in(staging: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(staging, directory)
        return
    # A fresh (empty) name every time: a backup left by an interrupted swap must not block the next one.
    backup = _make_temp_dir_sibling(directory)
    os.replace(directory, backup)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(backup, directory)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _verify_manifest(directory: Path, required: tuple[str, ...]) -> None:
    """Check that the folder's manifest lists `required` and that every listed file matches its sha256."""
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a model folder (it does not exist or is a file)")
    manifest_path = directory / MANIFEST
    listed = _read_json(manifest_path).get("files")
    if not isinstance(listed, dict):
        raise ArtifactError(f"{manifest_path} has no 'files' table: the folder was not written by seqcast")
    for name in required:
        if name not in listed:
            raise ArtifactError(f"{manifest_path} does not list {name}: the folder is incomplete")
    for name, expected in listed.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: the model folder is incomplete; save the model again")
        if sha256_file(path) != expected:
            raise ArtifactError(
                f"{path} does not match the sha256 in {MANIFEST}: it was changed or truncated after saving; "
                "save the model again"
            )


def read_model_dir(directory, *, json_names: tuple[str, ...]) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Verify the manifest, then read the JSON files and the safetensors weights."""
    directory = Path(directory)
    _verify_manifest(directory, (*json_names, "weights.safetensors"))
    docs = {name: _read_json(directory / name) for name in json_names}
    weights_path = directory / "weights.safetensors"
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{weights_path} is not a valid safetensors file: {exc}") from exc
    return docs, tensors


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is missing: the model folder is incomplete; save the model again") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}): the file is corrupt") from exc
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path} does not hold a JSON object: the file is corrupt")
    return doc


def _check_replaceable(directory: Path, replace: bool) -> None:
    """Refuse a destination whose replacement would lose the user's files: the new folder is swapped
    in whole, so whatever an existing folder held is deleted. Only a folder seqcast wrote (it has a
    manifest) or an empty one is replaced, another folder only with ``replace`` (the CLI's --force),
    never a file."""
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory} exists and is not a folder: choose another path for the model folder")
    try:
        cwd = Path.cwd()
    except OSError:  # the working folder was deleted
        cwd = None
    if cwd is not None and (directory == cwd or directory in cwd.parents):
        # Swapped out, it would leave this process (and the user's shell) in a deleted folder.
        raise ArtifactError(
            f"{directory} is the working folder or holds it: save into a sub-folder, such as {directory / 'model'}"
        )
    if not replace and directory.is_dir() and not (directory / MANIFEST).is_file() and any(directory.iterdir()):
        raise ArtifactError(
            f"{directory} already holds files that seqcast did not write (it has no {MANIFEST}); saving there "
            "would delete them: choose a new or empty folder, or pass replace=True to delete them"
        )


def write_bundle_dir(directory, *, json_files: dict[str, dict], build, replace: bool = False) -> Path:
    """A folder of `name.json` files plus whatever `build(staging)` writes into sub-folders, with a
    manifest of every file's sha256 (paths relative to the folder), replacing `directory` whole: an
    empty folder or one seqcast wrote, another folder only with ``replace`` (_check_replaceable)."""
    directory = Path(os.path.abspath(directory))  # "." and ".." have no name to put a sibling beside
    _check_replaceable(directory, replace)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_temp_dir_sibling(directory)
    try:
        for name, obj in json_files.items():
            atomic_write_json(staging / name, obj)
        build(staging)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        atomic_write_json(
            staging / MANIFEST,
            {"seqcast_version": __version__, "files": {name: sha256_file(staging / name) for name in files}},
        )
        _swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_bundle_dir(directory, *, json_names: tuple[str, ...]) -> dict[str, dict]:
    """Verify every file of a folder written by `write_bundle_dir` against its manifest; read the JSON files."""
    directory = Path(directory)
    _verify_manifest(directory, json_names)
    return {name: _read_json(directory / name) for name in json_names}

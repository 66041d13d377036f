"""The prefix-state cache: recurrent states at chunk boundaries of token sequences, in memory and on disk.

A recurrent model's whole context is its state, so the state after a token prefix is all a later request with
that prefix needs. Entries sit at multiples of the prefill chunk (the only places where a cold prefill's state is
computed by the same arithmetic as the one stored, see ``spikegpt.runtime.prefill``) and are keyed by a chained hash of
the prefix: ``key_k = H(key_{k-1} ‖ tokens of chunk k)``, with ``key_0`` the model's fingerprint and the prefill
layout, so another model's (or another chunk shape's) states never match. A hit is verified against the stored
tokens before use; a hash collision is a miss.

Two tiers: an LRU in memory bounded in bytes (on the model's device), and optionally a directory of safetensors
files (one per entry, tagged with the fingerprint and layout, written atomically), bounded in bytes, LRU by last
use, which survives restarts. Files that are unreadable or belong to another model are skipped with one warning.

Nothing in the directory is trusted: only regular files are opened (never a link, FIFO or device), within a size
bound that this model's states and prefixes need; a state read is an owned copy of the file's bytes (never a
mapping of the file, which another process may truncate or rewrite); and it is checked against the model (each
field's shape and dtype, finite values, the prefix's tokens) before use. A file that fails is a miss with one
warning naming it, and is removed, so that the correct state takes its place. A state with NaN or inf values is
never kept, whatever computed it.

Only the engine's thread touches a cache; ``stats`` may be read from anywhere (metrics).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import stat
from array import array
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

import torch

from ..modeling.state import RecurrentState

logger = logging.getLogger(__name__)

FILE_FORMAT = "spikegpt-state-v1"
SUFFIX = ".safetensors"
HEADER_BYTES = 1 << 16  # the most a file's JSON header (tensor names, shapes, offsets, the tag) may take
MAX_PREFIX_TOKENS = 1 << 20  # longer prefixes are not cached: with the state's size, this bounds a file's size


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's configuration and every weight (name, dtype, shape and bytes): two models share it only
    if they compute the same function in the same precision."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def token_bytes(tokens: list[int]) -> bytes:
    return array("i", tokens).tobytes()


@dataclass
class CacheStats:
    """Counters since start-up (lookups are per request; cached_tokens are the prompt tokens not recomputed)."""

    hits: int = 0
    misses: int = 0
    cached_tokens: int = 0
    stored: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    disk_hits: int = 0
    disk_writes: int = 0
    disk_evictions: int = 0
    disk_bytes: int = 0
    disk_entries: int = 0
    disk_skipped: int = 0


@dataclass
class _Entry:
    tokens: bytes
    state: RecurrentState
    nbytes: int


def _state_bytes(state: RecurrentState) -> int:
    return sum(t.nbytes for t in state.tensors())


def state_problem(state: RecurrentState, template: RecurrentState) -> str | None:
    """Why ``state`` cannot be a state of the model whose fresh batch-1 state is ``template`` (another shape or
    dtype in a field, NaN or inf values), or None when it can."""
    for f, tensor, expected in zip(fields(state), state.tensors(), template.tensors(), strict=True):
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            return (
                f"{f.name} is {tensor.dtype} {list(tensor.shape)}, the model's is {expected.dtype} "
                f"{list(expected.shape)}"
            )
    # one synchronisation for the whole state (a GPU would otherwise wait once per field)
    finite = torch.stack([torch.isfinite(t).all() for t in state.tensors()]).tolist()
    if not all(finite):
        return "NaN or inf in " + ", ".join(f.name for f, ok in zip(fields(state), finite, strict=True) if not ok)
    return None


class StateCache:
    """States after token prefixes at multiples of ``chunk``, LRU within ``max_bytes`` in memory, and within
    ``max_disk_bytes`` in ``directory`` when given.

    ``tag`` identifies what computed the states (the model's fingerprint and the prefill layout); entries with
    another tag are never used. ``template`` is the model's fresh state of batch 1: every state kept has its
    fields' shapes and dtypes.
    """

    def __init__(
        self,
        chunk: int,
        tag: str,
        max_bytes: int,
        directory: str | Path | None = None,
        max_disk_bytes: int = 1 << 30,
        device: torch.device | str = "cpu",
        *,
        template: RecurrentState,
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        if max_bytes < 0 or max_disk_bytes < 0:
            raise ValueError("cache sizes must be 0 or more bytes")
        self.chunk = chunk
        self.tag = tag
        self.root = hashlib.blake2b(tag.encode(), digest_size=16).digest()
        self.max_bytes = max_bytes
        self.device = torch.device(device)
        self.template = template
        self.stats = CacheStats()
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._refused_a_state = False  # whether a state was refused (non-finite) in store: warned about once
        self.disk = (
            DiskTier(Path(directory), tag, max_disk_bytes, self.stats, template) if directory is not None else None
        )

    # -- keys -------------------------------------------------------------------------------------------------
    def keys(self, tokens: list[int]) -> list[str]:
        """``keys[k - 1]`` names the prefix ``tokens[: k * chunk]``, for every whole chunk of ``tokens``."""
        out, key = [], self.root
        for start in range(0, len(tokens) - self.chunk + 1, self.chunk):
            key = hashlib.blake2b(key + token_bytes(tokens[start : start + self.chunk]), digest_size=16).digest()
            out.append(key.hex())
        return out

    # -- lookups ----------------------------------------------------------------------------------------------
    def lookup(self, tokens: list[int], limit: int, keys: list[str] | None = None) -> tuple[int, RecurrentState | None]:
        """The longest cached prefix of ``tokens`` no longer than ``limit`` tokens: (its length, a copy of its
        state, batch 1), or (0, None). Counted as one hit or miss, unless ``limit`` is under one chunk (nothing
        could be found)."""
        if limit < self.chunk:
            return 0, None
        keys = self.keys(tokens) if keys is None else keys
        for k in range(min(limit // self.chunk, len(keys)), 0, -1):
            n = k * self.chunk
            state = self._get(keys[k - 1], tokens[:n])
            if state is not None:
                self.stats.hits += 1
                self.stats.cached_tokens += n
                return n, state
        self.stats.misses += 1
        return 0, None

    def _get(self, key: str, prefix: list[int]) -> RecurrentState | None:
        entry = self._memory.get(key)
        expected = token_bytes(prefix)
        if entry is not None and entry.tokens == expected:
            self._memory.move_to_end(key)
            return entry.state.clone()
        if self.disk is None:
            return None
        state = self.disk.load(key, expected, self.device)
        if state is None:
            return None
        self._remember(key, expected, state)
        return state.clone()

    def longest(self, tokens: list[int], limit: int, keys: list[str]) -> int:
        """How long a prefix ``lookup`` would probably find (by key only: not verified, not counted, no file read)."""
        for k in range(min(limit // self.chunk, len(keys)), 0, -1):
            if keys[k - 1] in self._memory or (self.disk is not None and keys[k - 1] in self.disk):
                return k * self.chunk
        return 0

    def contains(self, tokens: list[int], key: str) -> bool:
        entry = self._memory.get(key)
        return entry is not None and entry.tokens == token_bytes(tokens)

    # -- storing ----------------------------------------------------------------------------------------------
    def store(self, tokens: list[int], key: str, state: RecurrentState) -> None:
        """Keep ``state`` (batch 1), the state after ``tokens`` (a whole number of chunks named by ``key``), unless
        it does not fit the model or has NaN or inf values (see ``state_problem``), or the prefix is longer than
        ``MAX_PREFIX_TOKENS``."""
        if len(tokens) % self.chunk or not tokens:
            raise ValueError(f"cache entries sit at multiples of {self.chunk} tokens, got {len(tokens)}")
        if len(tokens) > MAX_PREFIX_TOKENS or not self._storable(state):
            return
        expected = token_bytes(tokens)
        if self.contains(tokens, key):
            self._memory.move_to_end(key)
        else:
            self._remember(key, expected, state.clone())
            self.stats.stored += 1
        if self.disk is not None:
            self.disk.save(key, expected, state)

    def _storable(self, state: RecurrentState) -> bool:
        """Whether ``state`` fits the model and is finite (a NaN or inf state would spoil every request with its
        prefix; the first one refused is worth a warning, the next ones come from the same cause)."""
        problem = state_problem(state, self.template)
        if problem is None:
            return True
        if not self._refused_a_state:
            logger.warning("state cache: not keeping a state with %s (nor any other such state)", problem)
            self._refused_a_state = True
        return False

    def _remember(self, key: str, expected: bytes, state: RecurrentState) -> None:
        nbytes = _state_bytes(state) + len(expected)
        if nbytes > self.max_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self.stats.bytes -= old.nbytes
        self._memory[key] = _Entry(expected, state, nbytes)
        self.stats.bytes += nbytes
        while self.stats.bytes > self.max_bytes:
            _, evicted = self._memory.popitem(last=False)
            self.stats.bytes -= evicted.nbytes
            self.stats.evictions += 1
        self.stats.entries = len(self._memory)


class RefusedFile(Exception):
    """A file in the state directory that is not, or no longer, a state file of this model: the message says why,
    ``kind`` names the reason as the start-up scan counts files (a plural phrase)."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


def open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """``path`` opened for reading, with its status, if it is a regular file. A link (which may loop or lead to a
    device), a FIFO (whose opening waits for a writer) or a device is refused before anything is read from it."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise RefusedFile("not a regular file", "not regular files")
    # O_NOFOLLOW and O_NONBLOCK: should the name become a link or a FIFO after the check, opening still cannot
    # follow it or wait
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise RefusedFile("not a regular file", "not regular files")
        return os.fdopen(fd, "rb"), status
    except BaseException:
        os.close(fd)
        raise


def read_header(f: BinaryIO, size: int) -> dict:
    """The JSON header of a safetensors file of ``size`` bytes (8 bytes of little-endian length, then the header),
    reading at most ``HEADER_BYTES``."""
    length = int.from_bytes(f.read(8), "little")
    if not 2 <= length <= min(HEADER_BYTES, size - 8):
        raise RefusedFile("not a safetensors file")
    try:
        header = json.loads(f.read(length))
    except ValueError as e:
        raise RefusedFile(f"not a safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise RefusedFile("not a safetensors header")
    return header


class DiskTier:
    """One safetensors file per entry, ``<key>.safetensors``: the state's fields as ``[n_layer, n_embd]`` tensors,
    the prefix as ``tokens`` (int32), and metadata naming the format and the tag. Written to a temporary name and
    renamed, so a crash never leaves half a file under an entry's name. LRU by last use (the file's mtime, which a
    hit refreshes), within ``max_bytes`` counting this tag's files; other files are left alone. No file is larger
    than ``max_file_bytes``: the state, the longest prefix kept and a header."""

    def __init__(self, directory: Path, tag: str, max_bytes: int, stats: CacheStats, template: RecurrentState):
        self.directory = directory
        self.tag = tag
        self.max_bytes = max_bytes
        self.stats = stats
        self.template = template
        self.max_file_bytes = 8 + HEADER_BYTES + _state_bytes(template) + 4 * MAX_PREFIX_TOKENS
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file size, least recently used first
        self._scan()

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def _check_tag(self, header: dict) -> None:
        """Refuse a file whose header does not name this format and tag."""
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or metadata.get("format") != FILE_FORMAT:
            raise RefusedFile("not a state file")
        if metadata.get("tag") != self.tag:
            raise RefusedFile("another model's or prefill layout's state", "of another model or prefill layout")

    def _too_large(self) -> RefusedFile:
        return RefusedFile(
            f"larger than the {self.max_file_bytes} bytes a state file of this model may take",
            f"larger than {self.max_file_bytes} bytes",
        )

    def _open(self, path: Path) -> tuple[BinaryIO, os.stat_result]:
        """``path`` opened for reading, with its status, if it is a regular file no larger than a state file."""
        f, status = open_regular(path)
        if status.st_size > self.max_file_bytes:
            f.close()
            raise self._too_large()
        return f, status

    def _check_file(self, path: Path) -> os.stat_result:
        """The status of ``path``, a state file of this tag, judged by its header alone; else ``RefusedFile``."""
        f, status = self._open(path)
        with f:
            self._check_tag(read_header(f, status.st_size))
        return status

    def _scan(self) -> None:
        skipped: dict[str, int] = {}
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                status = self._check_file(path)
            except (RefusedFile, OSError) as e:
                kind = e.kind if isinstance(e, RefusedFile) else "unreadable"
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            found.append((status.st_mtime, path.name[: -len(SUFFIX)], status.st_size))
        for _, key, size in sorted(found):
            self._index[key] = size
        self.stats.disk_bytes = sum(self._index.values())
        self.stats.disk_entries = len(self._index)
        self.stats.disk_skipped = sum(skipped.values())
        if skipped:
            logger.warning(
                "state cache: skipped %d file(s) in %s: %s",
                self.stats.disk_skipped,
                self.directory,
                ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())),
            )
        self._evict()
        logger.info(
            "state cache: %d state file(s) in %s (%d bytes)", len(self._index), self.directory, self.stats.disk_bytes
        )

    def _read(self, path: Path, expected: bytes, device: torch.device) -> RecurrentState:
        """The state in ``path``, a copy in memory owned by the tensors (the file may change or shrink later),
        checked against the model and the prefix ``expected``; else ``RefusedFile`` (or the error reading it)."""
        from safetensors.torch import load

        f, _ = self._open(path)
        with f:
            data = f.read(self.max_file_bytes + 1)  # bounded: the file may have grown since it was opened
        if len(data) > self.max_file_bytes:
            raise self._too_large()
        self._check_tag(read_header(io.BytesIO(data), len(data)))
        tensors = load(data)
        names = [f.name for f in fields(RecurrentState)]
        if set(tensors) != {*names, "tokens"}:
            raise RefusedFile(f"tensors {sorted(tensors)}, not a state's")
        tokens = tensors["tokens"]
        if tokens.dtype != torch.int32 or tokens.dim() != 1 or tokens.numpy().tobytes() != expected:
            raise RefusedFile("its tokens are not the prefix its name stands for")
        state = RecurrentState(*(tensors[name].to(device, copy=True)[None] for name in names))
        problem = state_problem(state, self.template)
        if problem is not None:
            raise RefusedFile(problem)
        return state

    def load(self, key: str, expected: bytes, device: torch.device) -> RecurrentState | None:
        """The state stored under ``key`` for the prefix ``expected`` (its tokens' bytes), or None. A file that is
        not that is dropped with one warning, so that ``save`` writes the correct state in its place."""
        if key not in self._index:
            return None
        path = self._path(key)
        try:
            state = self._read(path, expected, device)
        except Exception as e:  # whatever is wrong with a cached file costs a miss, never the request
            logger.warning("state cache: refusing %s (a miss; the file is removed): %s", path, e)
            self._forget(key)
            self.stats.disk_skipped += 1
            # in a read-only directory the file stays, out of the index: the next start's scan judges it again
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        os.utime(path, follow_symlinks=False)
        self._index.move_to_end(key)
        self.stats.disk_hits += 1
        return state

    def save(self, key: str, expected: bytes, state: RecurrentState) -> None:
        if key in self._index:
            self._index.move_to_end(key)
            return
        from safetensors.torch import save_file

        tensors = {
            f.name: t[0].detach().cpu().contiguous() for f, t in zip(fields(state), state.tensors(), strict=True)
        }
        tensors["tokens"] = torch.frombuffer(bytearray(expected), dtype=torch.int32)
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(temporary), metadata={"format": FILE_FORMAT, "tag": self.tag})
            os.replace(temporary, path)
        except OSError as e:  # a full or read-only disk costs the disk tier, never the request
            logger.warning("state cache: cannot write %s: %s", path, e)
            temporary.unlink(missing_ok=True)
            return
        size = path.stat().st_size
        self._index[key] = size
        self.stats.disk_bytes += size
        self.stats.disk_entries = len(self._index)
        self.stats.disk_writes += 1
        self._evict()

    def _forget(self, key: str) -> None:
        size = self._index.pop(key, None)
        if size is not None:
            self.stats.disk_bytes -= size
            self.stats.disk_entries = len(self._index)

    def _evict(self) -> None:
        while self.stats.disk_bytes > self.max_bytes and self._index:
            key = next(iter(self._index))
            self._forget(key)
            self._path(key).unlink(missing_ok=True)
            self.stats.disk_evictions += 1

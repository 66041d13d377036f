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

Only the engine's thread touches a cache; ``stats`` may be read from anywhere (metrics).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..modeling.state import RecurrentState

logger = logging.getLogger(__name__)

FILE_FORMAT = "spikegpt-state-v1"
SUFFIX = ".safetensors"


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


class StateCache:
    """States after token prefixes at multiples of ``chunk``, LRU within ``max_bytes`` in memory, and within
    ``max_disk_bytes`` in ``directory`` when given.

    ``tag`` identifies what computed the states (the model's fingerprint and the prefill layout); entries with
    another tag are never used.
    """

    def __init__(
        self,
        chunk: int,
        tag: str,
        max_bytes: int,
        directory: str | Path | None = None,
        max_disk_bytes: int = 1 << 30,
        device: torch.device | str = "cpu",
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
        self.stats = CacheStats()
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self.disk = DiskTier(Path(directory), tag, max_disk_bytes, self.stats) if directory is not None else None

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
        """Keep ``state`` (batch 1), the state after ``tokens`` (a whole number of chunks named by ``key``)."""
        if len(tokens) % self.chunk or not tokens:
            raise ValueError(f"cache entries sit at multiples of {self.chunk} tokens, got {len(tokens)}")
        expected = token_bytes(tokens)
        if self.contains(tokens, key):
            self._memory.move_to_end(key)
        else:
            self._remember(key, expected, state.clone())
            self.stats.stored += 1
        if self.disk is not None:
            self.disk.save(key, expected, state)

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


class DiskTier:
    """One safetensors file per entry, ``<key>.safetensors``: the state's fields as ``[n_layer, n_embd]`` tensors,
    the prefix as ``tokens`` (int32), and metadata naming the format and the tag. Written to a temporary name and
    renamed, so a crash never leaves half a file under an entry's name. LRU by last use (the file's mtime, which a
    hit refreshes), within ``max_bytes`` counting this tag's files; other files are left alone."""

    def __init__(self, directory: Path, tag: str, max_bytes: int, stats: CacheStats):
        self.directory = directory
        self.tag = tag
        self.max_bytes = max_bytes
        self.stats = stats
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file size, least recently used first
        self._scan()

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def _read_metadata(self, path: Path) -> dict | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return f.metadata() or {}
        except Exception:
            return None

    def _scan(self) -> None:
        foreign, unreadable, found = 0, 0, []
        for path in self.directory.glob(f"*{SUFFIX}"):
            metadata = self._read_metadata(path)
            if metadata is None or metadata.get("format") != FILE_FORMAT:
                unreadable += 1
            elif metadata.get("tag") != self.tag:
                foreign += 1
            else:
                stat = path.stat()
                found.append((stat.st_mtime, path.name[: -len(SUFFIX)], stat.st_size))
        for _, key, size in sorted(found):
            self._index[key] = size
        self.stats.disk_bytes = sum(self._index.values())
        self.stats.disk_entries = len(self._index)
        self.stats.disk_skipped = foreign + unreadable
        if foreign or unreadable:
            logger.warning(
                "state cache: skipped %d file(s) in %s: %d of another model or prefill layout, %d unreadable",
                foreign + unreadable,
                self.directory,
                foreign,
                unreadable,
            )
        self._evict()
        logger.info(
            "state cache: %d state file(s) in %s (%d bytes)", len(self._index), self.directory, self.stats.disk_bytes
        )

    def load(self, key: str, expected: bytes, device: torch.device) -> RecurrentState | None:
        if key not in self._index:
            return None
        from safetensors.torch import load_file

        path = self._path(key)
        names = [f.name for f in fields(RecurrentState)]
        try:
            tensors = load_file(str(path), device=str(device))
            if self._read_metadata(path).get("tag") != self.tag or set(tensors) != {*names, "tokens"}:
                raise ValueError("another model's file, or another state layout")
            if tensors["tokens"].to(torch.int32).cpu().numpy().tobytes() != expected:
                return None  # another prefix under this name (a hash collision): a miss, the file stays
            state = RecurrentState(*(tensors[name][None] for name in names))
        except Exception as e:  # corrupted or replaced since the scan: skip it once, never again
            logger.warning("state cache: skipping %s: %s", path, e)
            self._forget(key)
            self.stats.disk_skipped += 1
            return None
        os.utime(path)
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

"""What stateful algorithms keep on each simulated client (SCAFFOLD's control variate c_i,
FedSA-LoRA's B), held so that memory grows with the clients in training, not the population.

In memory by default (a site process holds its one client's state). A simulation of many
clients `keep_on_disk(folder)`: a state then lives in its own safetensors file, loaded when
the client is sampled and written back when it leaves a small cache. Each write is a new
file (`site-7.3.safetensors`), so a checkpoint names the files it stands for instead of
copying the population's states at every save; files no checkpoint or client still needs are
deleted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from fedumm.federation import wire
from fedumm.federation.checkpoint import CheckpointError, atomic_write
from fedumm.federation.update import Params

CACHED = 64  # states held in memory at once when kept on disk: a round's clients and more


class ClientStates(MutableMapping[str, Params]):
    """client id -> its state dict; an unknown client's state is a new empty dict (the
    algorithm fills it in place while the client trains). On disk, a state read here may be
    written back and dropped from memory at any later access: change it before the next one
    (as a client's training does), replacing its tensors or changing them in place."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, Params] = OrderedDict()
        self._folder: Path | None = None
        self._files: dict[str, str] = {}  # client -> its newest file
        self._pinned: set[str] = set()  # files the latest checkpoint names
        self._loaded: dict[str, dict] = {}  # client -> its state's tensors as read from its file
        self._writes = 0

    def keep_on_disk(self, folder: Path) -> None:
        """From now on, states live in `folder` (made at the first write), a few cached in
        memory."""
        self._folder = Path(folder)
        self._evict(0)

    def __getitem__(self, cid: str) -> Params:
        if cid in self._cache:
            self._cache.move_to_end(cid)
            return self._cache[cid]
        state = {}
        if cid in self._files:
            state = wire.unpack((self._folder / self._files[cid]).read_bytes())
        self[cid] = state
        self._loaded[cid] = _fingerprint(state)
        return state

    def __setitem__(self, cid: str, state: Params) -> None:
        self._loaded.pop(cid, None)
        self._cache[cid] = state
        self._cache.move_to_end(cid)
        if self._folder is not None:
            self._evict(CACHED)

    def __delitem__(self, cid: str) -> None:
        self._cache.pop(cid, None)
        if cid in self._files:
            self._drop(self._files.pop(cid))

    def __contains__(self, cid: object) -> bool:
        """Whether `cid` has a state (reading one that has none would give an empty one)."""
        return bool(self._cache[cid]) if cid in self._cache else cid in self._files

    def __iter__(self) -> Iterator[str]:
        """The clients that have a state (written or in memory)."""
        yield from (cid for cid in dict.fromkeys([*self._files, *self._cache]) if cid in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def snapshot(self) -> dict:
        """What a checkpoint holds: on disk, the file of each client's state (everything
        written first); in memory, the states themselves."""
        if self._folder is None:
            return {cid: state for cid, state in self._cache.items() if state}
        self._evict(0)
        return dict(self._files)

    def pinned(self, snapshot: dict) -> None:
        """The checkpoint holding `snapshot` is saved: the files it superseded can go."""
        if self._folder is None:
            return
        before, self._pinned = self._pinned, set(snapshot.values())
        for name in before - self._pinned - set(self._files.values()):
            (self._folder / name).unlink(missing_ok=True)

    def restore(self, snapshot: dict) -> None:
        """Back to a checkpoint's `snapshot`; files written after it are deleted."""
        self._cache.clear()
        self._files.clear()
        for cid, value in snapshot.items():
            if isinstance(value, str):
                self._files[cid] = value
            else:  # a checkpoint of states held in memory
                self[cid] = value
        if self._folder is not None:
            self._pinned = set(self._files.values())
            missing = [n for n in sorted(self._pinned) if not (self._folder / n).is_file()]
            if missing:
                raise CheckpointError(
                    f"the checkpoint names client states that are not in "
                    f"{self._folder}: {', '.join(missing[:3])}"
                )
            for path in self._folder.glob("*.safetensors"):
                if path.name not in self._pinned:
                    path.unlink()
            numbers = [int(name.split(".")[-2]) for name in self._pinned]
            self._writes = max(numbers, default=0)  # new files never take a kept one's name
            self._evict(0)

    def _evict(self, keep: int) -> None:
        """Write the least recently used states to disk until `keep` stay in memory."""
        while len(self._cache) > keep:
            cid, state = self._cache.popitem(last=False)
            if not state:  # emptied (or never filled): no file stands for it
                self._loaded.pop(cid, None)
                if cid in self._files:
                    self._drop(self._files.pop(cid))
                continue
            if _unchanged(self._loaded.pop(cid, None), state):
                continue
            self._writes += 1
            name = f"{cid}.{self._writes}.safetensors"
            self._folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self._folder / name, wire.pack(state))
            old = self._files.get(cid)
            self._files[cid] = name
            if old is not None and old not in self._pinned:
                self._drop(old)

    def _drop(self, name: str) -> None:
        """Delete a superseded file, unless a checkpoint still names it."""
        if self._folder is not None and name not in self._pinned:
            (self._folder / name).unlink(missing_ok=True)


def _fingerprint(state: Params) -> dict:
    """Which tensors a state holds and how often each was changed in place (torch counts it)."""
    return {k: (v, v._version) for k, v in state.items()}


def _unchanged(fingerprint: dict | None, state: Params) -> bool:
    return (
        fingerprint is not None
        and fingerprint.keys() == state.keys()
        and all(state[k] is v and state[k]._version == n for k, (v, n) in fingerprint.items())
    )

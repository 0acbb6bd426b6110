"""Atomic, checksummed checkpoints of a federation, so a killed run resumes exactly.

A checkpoint holds everything the next round depends on: the global adapter, the strategy's
server state (momentum, FedOpt moments, SCAFFOLD's c), the simulated clients' own state (the
names of its files, when kept on disk: federation/client_states.py), the round
records so far, and torch's global RNG state. Every other random draw derives from
(seed, round, client), so the round number is the rest of the RNG state.

Writing is crash-safe: the payload goes to a new file (`checkpoint-00003.pt`), then the manifest
`checkpoint.json` that names it and its sha256 is replaced atomically; a kill at any point leaves
either the old or the new checkpoint whole. A payload that does not match its checksum is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedumm.federation.update import Params

MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupted; the message says which file."""


@dataclass
class Checkpoint:
    round: int
    config: dict
    global_params: Params
    strategy_state: Params
    client_states: dict[str, Params | str]  # the states, or their files (ClientStates)
    records: list[dict]
    extra: dict = field(default_factory=dict)  # results computed before the rounds
    rng_state: torch.Tensor = field(default_factory=torch.get_rng_state)


def atomic_write(path: Path, data: bytes) -> None:
    """`data` into `path` whole or not at all, on disk before it returns (a crash of the machine
    leaves the old file or the new, never a truncated one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(out_dir: Path, ckpt: Checkpoint) -> None:
    out_dir = Path(out_dir)
    buffer = io.BytesIO()
    torch.save(vars(ckpt), buffer)
    data = buffer.getvalue()
    name = f"checkpoint-{ckpt.round:05d}.pt"
    atomic_write(out_dir / name, data)
    manifest = {
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "round": ckpt.round,
        "config": ckpt.config,
    }
    atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    for old in out_dir.glob("checkpoint-*.pt"):
        if old.name != name:
            old.unlink()


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupted ({e}); refusing to resume") from None


def load(out_dir: Path) -> Checkpoint:
    manifest = read_manifest(out_dir)
    path = Path(out_dir) / manifest["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}, named by {MANIFEST}, is missing; refusing to resume")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise CheckpointError(
            f"{path} is corrupted or truncated (sha256 {digest[:12]}..., expected "
            f"{manifest['sha256'][:12]}...); refusing to resume from it"
        )
    return Checkpoint(**torch.load(io.BytesIO(data), weights_only=True))

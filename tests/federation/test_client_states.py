import pytest
import torch

from fedumm.federation import client_states as module
from fedumm.federation.client_states import ClientStates


def _train(states: ClientStates, cid: str, value: float) -> None:
    """What an algorithm does with a client's state while it trains: update it in place."""
    states[cid].update({"c": torch.full((3,), value)})


def test_in_memory_an_unknown_client_starts_empty_and_keeps_what_it_is_given():
    states = ClientStates()
    assert states["site-1"] == {} and list(states) == []  # empty states are not listed
    _train(states, "site-1", 1.0)
    assert list(states) == ["site-1"] and states["site-1"]["c"].tolist() == [1.0] * 3
    assert states.snapshot() == {"site-1": states["site-1"]}


def test_on_disk_only_a_few_states_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "CACHED", 2)
    states = ClientStates()
    states.keep_on_disk(tmp_path / "s")
    for i in range(6):
        _train(states, f"site-{i}", float(i))
    assert len(states._cache) == 2 and len(list((tmp_path / "s").iterdir())) == 4
    assert sorted(states) == [f"site-{i}" for i in range(6)]
    for i in range(6):  # each read back from its file, or the cache
        assert states[f"site-{i}"]["c"].tolist() == [float(i)] * 3
    assert len(states._cache) == 2
    assert len(list((tmp_path / "s").iterdir())) == 6  # a state read, not changed: not rewritten


def test_a_checkpoint_names_files_and_restoring_it_undoes_later_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "CACHED", 1)
    folder = tmp_path / "s"
    states = ClientStates()
    states.keep_on_disk(folder)
    for i in range(3):
        _train(states, f"site-{i}", 1.0)
    snapshot = states.snapshot()  # everything written: the checkpoint holds names, not tensors
    assert sorted(snapshot) == ["site-0", "site-1", "site-2"]
    assert all(isinstance(v, str) and (folder / v).is_file() for v in snapshot.values())
    states.pinned(snapshot)
    for i in range(2):  # the next rounds: site-0 and site-1 train again, twice
        _train(states, "site-0", 2.0 + i)
        _train(states, "site-1", 2.0 + i)
    assert (folder / snapshot["site-0"]).is_file()  # kept: the checkpoint needs it
    newer = states.snapshot()
    states.pinned(newer)
    assert not (folder / snapshot["site-0"]).exists()  # superseded by the newer checkpoint
    assert (folder / snapshot["site-2"]).is_file()  # still site-2's newest

    _train(states, "site-2", 9.0)  # a crash after this write: resume from `newer`
    resumed = ClientStates()
    resumed.keep_on_disk(folder)
    resumed.restore(newer)
    assert {cid: resumed[cid]["c"][0].item() for cid in sorted(resumed)} == {
        "site-0": 3.0,
        "site-1": 3.0,
        "site-2": 1.0,
    }
    assert sorted(p.name for p in folder.iterdir()) == sorted(newer.values())
    for i in range(4):  # new files never overwrite one the checkpoint names
        _train(resumed, "site-3", float(i))
    assert resumed["site-0"]["c"][0].item() == 3.0 and resumed["site-2"]["c"][0].item() == 1.0


def test_a_checkpoint_of_states_in_memory_restores_into_a_store_on_disk(tmp_path):
    before = {"site-1": {"c": torch.ones(2)}}  # what older checkpoints hold
    states = ClientStates()
    states.keep_on_disk(tmp_path)
    states.restore(before)
    assert states["site-1"]["c"].tolist() == [1.0, 1.0]


def test_an_emptied_state_leaves_no_file_and_a_missing_file_is_named(tmp_path, monkeypatch):
    from fedumm.federation.checkpoint import CheckpointError

    monkeypatch.setattr(module, "CACHED", 1)
    states = ClientStates()
    states.keep_on_disk(tmp_path / "s")
    _train(states, "site-1", 1.0)
    _train(states, "site-2", 2.0)  # site-1 written
    states["site-1"].clear()  # an algorithm that forgets what the client held
    _train(states, "site-2", 3.0)
    assert "site-1" not in states and states["site-1"] == {}
    snapshot = states.snapshot()
    (tmp_path / "s" / snapshot["site-2"]).unlink()
    with pytest.raises(CheckpointError, match=snapshot["site-2"]):
        _restore_on_disk(tmp_path / "s", snapshot)


def _restore_on_disk(folder, snapshot):
    states = ClientStates()
    states.keep_on_disk(folder)
    states.restore(snapshot)

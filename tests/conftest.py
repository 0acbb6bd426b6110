"""Shared fixtures: a tiny foundation pretrained for a few steps, built once per test session;
and the work units `make test` hands to its pytest-xdist workers (`--dist loadgroup`)."""

from __future__ import annotations

import inspect
import os

# One CPU thread per test, also in the processes tests start (FLARE and Flower sites, `fedumm`
# commands): `make test` runs three pytest workers on two cores, and torch's threads spinning
# beside the other workers' cost several times their work.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from fedumm.config import PretrainConfig
from fedumm.pretraining import pretrain
from tests.official_formats import crisismmd, hateful_memes, vqa_root  # noqa: F401 (fixtures)

TINY_PRETRAIN = dict(
    steps=3,
    train_samples=64,
    test_samples=8,
    codebook_images=60,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    text_vocab_size=300,
    batch_size=16,
)


torch.set_num_threads(1)  # for the session's and modules' fixtures, built before any test's


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # again: a run with its own `threads` may have changed it


@pytest.fixture(scope="session")
def tiny_foundation(tmp_path_factory):
    """Path of a tiny foundation checkpoint written by the real pretraining code."""
    out = tmp_path_factory.mktemp("foundation")
    pretrain(PretrainConfig(**TINY_PRETRAIN), out)
    return out


# Tests that start an engine's processes: each engine's, one after another on one worker.
# FLARE's POC server listens on fixed ports (8002, 8003), and the POC and Flower deployment
# tests check that no process of their kind is left running on the machine: a process of the
# same kind on another worker would be taken for one left behind. Per engine: its modules
# (test_extras.py's lean processes name nvflare in their command line, as the module they
# hide), and what in a test that runs a federation says it runs on that engine.
ENGINE_RUNS = {
    "flare": (("test_flare.py", "test_extras.py"), ("engine=flare", '"--engine", "flare"')),
    "flower": (("test_flower.py",), ("engine=flower", '"--engine", "flower"', "flower.env=")),
}


def _engine(item: pytest.Item) -> str | None:
    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        source = ""
    runs = "tiny_foundation" in getattr(item, "fixturenames", ())
    for engine, (modules, said) in ENGINE_RUNS.items():
        if item.path.name in modules or (runs and any(s in source for s in said)):
            return engine
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    """Work units for `pytest -n N --dist loadgroup`: a test on its own, except an engine's
    process runs (one unit per engine, see ENGINE_RUNS) and the tests of a module that share a
    module-scoped fixture (one unit, so that fixture is built once, not on each worker)."""
    if not getattr(config.option, "loadgroup", False):  # set by pytest-xdist's workers
        return
    for item in items:
        group = _engine(item)
        if group is None:
            defs = getattr(item, "_fixtureinfo", None)
            shared = defs is not None and any(
                d.scope == "module" for ds in defs.name2fixturedefs.values() for d in ds
            )
            group = item.module.__name__ if shared else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist sends the workers' ids to the scheduler
def pytest_collection_finish(session):
    """pytest-xdist (3.8) tells its scheduler an item's group through the item's id, test@group,
    which it writes to item._nodeid; pytest 9.2 reads ids from item._id, so the groups are
    silently dropped (pytest-dev/pytest-xdist#1386). Where a group did not reach the id, put it
    there; if that fails too, stop rather than run engines side by side."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        marks = item.iter_markers("xdist_group")
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        suffix = "@" + "_".join(sorted(names))
        if not names or item.nodeid.endswith(suffix):
            continue
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(f"--dist loadgroup cannot group {item.nodeid}")

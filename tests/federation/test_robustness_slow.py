"""Issue #8's attack test at the benchmark's scale (minutes, so slow: `make test-all`): the IID
cells of the shipped robustness sweep, clean and with 20% sign-flipping clients."""

import pytest

from fedumm.engines import run_federation
from fedumm.paper_sweeps import SWEEPS
from fedumm.sweep import label, load_sweep

RULES = (
    "name=fedavg",
    "name=median",
    "name=trimmed_mean",
    "name=krum,num_byzantine=2,multi_krum=8",
)


@pytest.mark.slow
def test_robust_rules_stay_within_3_points_under_sign_flipping_where_fedavg_collapses(tmp_path):
    cells = [
        c
        for c in load_sweep(SWEEPS / "robustness.yaml").cells
        if label(c.values["clients"]) == "IID"
        and c.values["attack.kind"] in ("none", "sign_flip")
        and label(c.values["federation.strategy"]) in RULES
    ]
    acc = {}
    for cell in cells:
        results = run_federation(cell.config, tmp_path / cell.name, progress=False)
        key = (cell.values["attack.kind"], label(cell.values["federation.strategy"]))
        acc[key] = results.final.metrics["vqa_accuracy"]
    assert len(acc) == 2 * len(RULES), acc
    assert acc["sign_flip", RULES[0]] < acc["none", RULES[0]] - 20, acc
    for rule in RULES[1:]:
        assert acc["sign_flip", rule] >= acc["none", rule] - 3, (rule, acc)

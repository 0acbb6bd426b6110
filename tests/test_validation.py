"""What only the algorithms and model families know is checked after the schema, naming the key."""

import pytest

from fedumm.config import ConfigError
from fedumm.validation import load_run_config


def test_a_valid_config_passes_through():
    cfg = load_run_config("configs/quickstart.yaml", ["federation.strategy.name=fedprox"])
    assert cfg.federation.strategy.name == "fedprox"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["federation.strategy.name=fedsgd"],
            "federation.strategy.name: unknown strategy 'fedsgd'",
        ),
        (["federation.strategy.mu=0.1"], "federation.strategy.mu: fedavg has no parameter 'mu'"),
        (
            ["federation.strategy.name=fedprox", "federation.strategy.mu=-1"],
            "federation.strategy.mu",
        ),
    ],
)
def test_what_the_algorithm_refuses_names_the_file_and_key(overrides, message):
    with pytest.raises(ConfigError) as refused:
        load_run_config("configs/quickstart.yaml", overrides)
    assert "invalid config configs/quickstart.yaml" in str(refused.value)
    assert message in str(refused.value)


def test_defaults_are_named_as_such_when_no_file_is_given():
    with pytest.raises(ConfigError, match=r"invalid config \(defaults\)"):
        load_run_config(None, ["federation.strategy.name=nosuch"])

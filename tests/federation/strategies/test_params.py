"""Each algorithm owns its parameters: its `Params` declare them (default, bounds, one-line
description), `build_strategy` and the config check refuse what they do not declare, and
`fedumm strategies` / `fedumm config` list them from there."""

import pytest
from typer.testing import CliRunner

from fedumm.cli import app
from fedumm.federation.strategies import STRATEGIES, build_strategy
from fedumm.federation.strategies.base import StrategyParams

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_parameter_has_a_default_and_a_one_line_description(name):
    params = STRATEGIES[name].Params
    assert issubclass(params, StrategyParams)
    for key, field in params.model_fields.items():
        assert field.description and "\n" not in field.description, f"{name}.{key}"
        assert not field.is_required(), f"{name}.{key} has no default"
    assert build_strategy(name).hp == params().model_dump()  # the defaults are what it reads


def test_given_parameters_replace_the_defaults_as_the_schema_types_them():
    assert build_strategy("fedprox", mu=1).hp == {"mu": 1.0}
    assert isinstance(build_strategy("fedprox", mu=1).hp["mu"], float)
    assert build_strategy("krum", num_byzantine=2.0).hp == {"num_byzantine": 2, "multi_krum": 1}
    assert build_strategy("fedadam", beta2=0.5).hp == {
        "server_lr": 0.03,
        "beta1": 0.9,
        "tau": 1e-3,
        "beta2": 0.5,
    }


@pytest.mark.parametrize(
    "name, given, message",
    [
        (
            "fedprox",
            {"muu": 0.1},
            "federation.strategy.muu: fedprox has no parameter 'muu'; its parameters: mu",
        ),
        (
            "fedavg",
            {"mu": 0.1},
            "federation.strategy.mu: fedavg has no parameter 'mu'; its parameters: none",
        ),
        (
            "fedadagrad",
            {"beta2": 0.9},
            "federation.strategy.beta2: fedadagrad has no parameter 'beta2'; "
            "its parameters: server_lr, beta1, tau",
        ),
        ("fedavgm", {"momentum": 1.0}, "federation.strategy.momentum: Input should be less than 1"),
        ("dp_fedavg", {"clip_norm": 0.0}, "federation.strategy.clip_norm: Input should be greater"),
        ("krum", {"multi_krum": 0}, "federation.strategy.multi_krum: Input should be greater"),
    ],
)
def test_a_parameter_the_algorithm_does_not_declare_is_refused_naming_it(name, given, message):
    with pytest.raises(ValueError) as err:
        build_strategy(name, **given)
    assert message in str(err.value)


def test_the_commands_list_every_parameter_from_the_algorithms():
    listed = runner.invoke(app, ["strategies"]).output
    config = runner.invoke(app, ["config"]).output
    for name, cls in STRATEGIES.items():
        assert name in listed
        for key, field in cls.Params.model_fields.items():
            assert f"{key}: {field.default:g}" in listed and field.description in listed
            assert f"{key}: " in config and f"  # {field.description}" in config

import math
from pathlib import Path

import pytest

from fedumm.config import ConfigError, PretrainConfig, RunConfig, load_config
from fedumm.validation import load_run_config


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_shipped_configs_validate():
    assert isinstance(load_config(None), RunConfig)
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.federation.num_clients == 8 and cfg.partition.alpha == 0.5
    pretraining = set(Path("configs").glob("pretrain*.yaml"))
    shipped = sorted(set(Path("configs").glob("*.yaml")) - pretraining)
    assert len(shipped) >= 3 and all(isinstance(load_run_config(p), RunConfig) for p in shipped)
    # The schema's defaults are the captioner's; the assistant adds questions of two families
    # and a longer schedule; assistant-v2 (the default foundation) short captions besides.
    assert load_config("configs/pretrain_captioner.yaml", schema=PretrainConfig) == PretrainConfig()
    assistant = load_config("configs/pretrain_assistant.yaml", schema=PretrainConfig)
    assert assistant.question_samples == 4000
    assert assistant.question_families == ["existence", "color"]
    v2 = load_config("configs/pretrain.yaml", schema=PretrainConfig)
    assert v2.model_copy(update={"short_captions": 0.0, "threads": 2}) == assistant
    janus = load_config("configs/pretrain_janus.yaml", schema=PretrainConfig)
    assert janus.architecture == "janus" and len(pretraining) == 4


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        "configs/quickstart.yaml", ["federation.rounds=3", "lora.r=4", "partition.scheme=iid"]
    )
    assert (cfg.federation.rounds, cfg.lora.r, cfg.partition.scheme) == (3, 4, "iid")


@pytest.mark.parametrize(
    "text, message",
    [
        ("federation:\n  roundz: 3\n", "federation.roundz: unknown key"),
        ("federation:\n  rounds: many\n", "federation.rounds: Input should be a valid integer"),
        ("partition:\n  alpha: 0\n", "partition.alpha: Input should be greater than 0"),
        ("lora:\n  r: 0\n", "lora.r: Input should be greater than or equal to 1"),
        (
            "federation:\n  num_clients: 2\n  clients_per_round: 3\n",
            "clients_per_round (3) exceeds num_clients (2)",
        ),
        (
            "federation:\n  strategy:\n    name: fedfoo\n",
            "known: dp_fedavg, fedadagrad, fedadam, fedavg, fedavgm, fedex_lora, fednova",
        ),
        (
            "federation:\n  strategy:\n    name: fedprox\n    mu: -0.1\n",
            "federation.strategy.mu: Input should be greater than or equal to 0",
        ),
        (
            "federation:\n  strategy:\n    name: fedadam\n    beta1: 1.0\n",
            "federation.strategy.beta1: Input should be less than 1",
        ),
        (
            "federation:\n  strategy:\n    name: fedyogi\n    beta2: -0.5\n",
            "federation.strategy.beta2: Input should be greater than or equal to 0",
        ),
        (
            "federation:\n  strategy:\n    name: fedavg\n    mu: 0.1\n",
            "federation.strategy.mu: fedavg has no parameter 'mu'; its parameters: none; "
            "fedprox takes it",
        ),
        (
            "federation:\n  strategy:\n    name: fedprox\n    muu: 0.1\n",
            "federation.strategy.muu: fedprox has no parameter 'muu'; its parameters: mu",
        ),
        (
            "federation:\n  strategy:\n    name: fedadagrad\n    beta2: 0.5\n",
            "federation.strategy.beta2: fedadagrad has no parameter 'beta2'; its parameters: "
            "server_lr, beta1, tau; fedadam, fedyogi take it",
        ),
        (
            "federation:\n  strategy:\n    name: trimmed_mean\n    trim_fraction: 0.5\n",
            "federation.strategy.trim_fraction: Input should be less than 0.5",
        ),
        (
            "federation:\n  strategy:\n    name: dp_fedavg\n    clip_norm: 0\n",
            "federation.strategy.clip_norm: Input should be greater than 0",
        ),
        (
            "federation:\n  strategy:\n    name: krum\n    multi_krum: two\n",
            "federation.strategy.multi_krum: Input should be a valid integer",
        ),
        ("lora:\n  client_ranks: [4, 8]\n", "lora.client_ranks has 2 entries for 8 clients"),
        (
            "lora:\n  client_ranks: [4, 8, 4, 4, 4, 4, 4, 4]\n",
            "fedavg averages factors of one shape; use a strategy that mixes ranks: flora",
        ),
        (
            "lora:\n  client_ranks: [4, 0, 4, 4, 4, 4, 4, 4]\n",
            "lora.client_ranks: Value error, every rank must be >= 1",
        ),
        (
            "data:\n  train_samples: 50\npartition:\n  min_samples: 10\n",
            "cannot give 8 clients partition.min_samples (10) each",
        ),
        (
            "data:\n  train_samples: 5\npartition:\n  min_samples: 1\n",
            "federation.num_clients (8) is more than data.train_samples (5)",
        ),
        (
            "data:\n  train_samples: 50\npartition:\n  scheme: shards\n  shards_per_client: 7\n"
            "  min_samples: 1\n",
            "data.train_samples (50) cannot make 8 clients x "
            "partition.shards_per_client (7) shards",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "c.yaml") in str(err.value)


def test_strategy_parameters_are_the_algorithms_own():
    """`federation.strategy` is a name and the parameters set beside it: what the algorithm
    reads (its defaults fill in the rest) and what results.json stores."""
    cfg = load_run_config(None, ["federation.strategy.name=fedprox", "federation.strategy.mu=0.05"])
    assert cfg.federation.strategy.hyperparameters() == {"mu": 0.05}
    assert cfg.model_dump()["federation"]["strategy"] == {"name": "fedprox", "mu": 0.05}
    assert RunConfig().model_dump()["federation"]["strategy"] == {"name": "fedavg"}


def test_a_stored_config_of_the_flat_strategy_schema_still_loads():
    """results.json and checkpoints written before the algorithms owned their parameters list
    all twelve beside the name, null where unset: null is the algorithm's default."""
    flat = dict.fromkeys(
        [
            "mu",
            "server_lr",
            "momentum",
            "beta1",
            "beta2",
            "tau",
            "trim_fraction",
            "num_byzantine",
            "multi_krum",
            "clip_norm",
            "noise_multiplier",
            "target_delta",
        ]
    )
    stored = RunConfig().model_dump()
    stored["federation"]["strategy"] = {**flat, "name": "krum", "num_byzantine": 2}
    cfg = RunConfig.model_validate(stored)
    assert cfg.model_dump()["federation"]["strategy"] == {"name": "krum", "num_byzantine": 2}
    assert cfg == load_run_config(
        None, ["federation.strategy.name=krum", "federation.strategy.num_byzantine=2"]
    )


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["federation.rounds"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2"))


def test_pretrain_schema_checks_heads():
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        load_config(None, ["hidden_size=30", "num_heads=4"], PretrainConfig)


def test_local_epochs_and_sample_fraction():
    fed = load_config(
        None,
        [
            "federation.local_epochs=2",
            "federation.batch_size=10",
            "federation.sample_fraction=0.25",
        ],
    ).federation
    assert fed.steps_for(45) == 9 and fed.steps_for(1) == 1  # ceil(2 * 45 / 10)
    assert fed.sampled_per_round == 2  # 0.25 of the default 8 clients
    assert load_config(None, ["federation.sample_fraction=0.01"]).federation.sampled_per_round == 1
    assert load_config(None).federation.steps_for(45) == 20  # local_steps when epochs unset
    with pytest.raises(ConfigError, match="federation.sample_fraction"):
        load_config(None, ["federation.sample_fraction=1.5"])
    assert (
        load_config(None, ["federation.client_sampling=cyclic"]).federation.client_sampling
        == "cyclic"
    )
    with pytest.raises(ConfigError, match="federation.client_sampling: Input should be 'random'"):
        load_config(None, ["federation.client_sampling=round-robin"])


def test_cosine_lr_decay_over_the_run():
    from fedumm.config import FederationConfig

    assert FederationConfig(lr=0.01).lr_at(0.7) == 0.01
    cosine = FederationConfig(lr=0.01, lr_decay="cosine")
    assert cosine.lr_at(0.0) == pytest.approx(0.01)
    assert cosine.lr_at(0.5) == pytest.approx(0.005)
    assert cosine.lr_at(0.9) == pytest.approx(0.005 * (1 + math.cos(0.9 * math.pi)))
    assert cosine.lr_at(0.5, peak=0.004) == pytest.approx(0.002)  # the baselines' own lr


CLASSIFICATION = "data:\n  tasks: [classification]\nfederation:\n  num_clients: 10\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "partition:\n  modality:\n    scenario: partial\n",
            "partition.modality.scenario: "
            "Input should be 'aligned', 'missing', 'cross' or 'hybrid'",
        ),
        (
            "partition:\n  modality:\n    drop_probability: 1.5\n",
            "partition.modality.drop_probability: Input should be less than or equal to 1",
        ),
        (
            "partition:\n  modality:\n    presence_probability: -0.2\n",
            "partition.modality.presence_probability: Input should be greater than or equal to 0",
        ),
        (
            "partition:\n  modality:\n    scenario: cross\n    image_only_clients: 11\n",
            "image_only_clients (11) exceeds the 10 clients holding the classification task",
        ),
    ],
)
def test_bad_modality_scenarios_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_write(tmp_path, CLASSIFICATION + text))


def test_a_modality_scenario_needs_the_classification_task(tmp_path):
    with pytest.raises(ConfigError, match="scenario 'missing' applies to the classification"):
        load_config(_write(tmp_path, "partition:\n  modality:\n    scenario: missing\n"))


def test_shipped_classification_config_validates():
    cfg = load_config("configs/classification.yaml")
    assert cfg.data.tasks == ["classification"] and cfg.federation.sampled_per_round == 2


@pytest.mark.parametrize(
    "deployment", [["engine=flare", "flare.env=poc"], ["engine=flower", "flower.env=deployment"]]
)
def test_deployments_refuse_noise_anyone_can_regenerate(deployment):
    """Real processes are a deployment: DP noise from the run seed (which whoever holds the
    config can subtract) is refused there, by RunConfig.check_deployment, as it is for the
    exports (tests/test_cli_end_to_end.py); the same config simulates."""
    seeded = "federation.seeded_privacy_noise=true"
    where = deployment[1].replace("=", " ")  # flare.env poc
    refused = rf"federation\.seeded_privacy_noise: {where} is a deployment, where noise anyone"
    with pytest.raises(ConfigError, match=refused):
        load_config(None, [*deployment, seeded])
    simulated = load_config(None, [deployment[0], seeded])
    assert simulated.deployment is None and simulated.federation.seeded_privacy_noise
    assert load_config(None, deployment).deployment == where


def test_compression_says_what_it_compresses():
    from fedumm.config import CompressionConfig

    assert CompressionConfig().summary() == ""
    cfg = CompressionConfig.model_validate(
        {
            "upload": {
                "scheme": "topk",
                "fraction": 0.01,
                "values": "int8",
                "error_feedback": True,
            },
            "broadcast": {"scheme": "fp16"},
        }
    )
    assert cfg.summary() == "uploads top-0.01 (int8) with error feedback, broadcast fp16"


@pytest.mark.parametrize(
    "compression, message",
    [
        ({"upload": {"scheme": "int3"}}, "upload.scheme"),
        ({"upload": {"scheme": "topk", "fraction": 0}}, "upload.fraction"),
        ({"upload": {"scheme": "topk", "fraction": 1.5}}, "upload.fraction"),
        ({"upload": {"scheme": "int8", "block_size": 48}}, "block_size 48 is not a power of two"),
        ({"upload": {"scheme": "int8", "block_size": 4}}, "block_size 4 is not a power of two"),
        ({"upload": {"scheme": "int8", "fraction": 0.5}}, "fraction: scheme int8 does not read it"),
        ({"upload": {"scheme": "none", "error_feedback": True}}, "error_feedback: scheme none"),
        ({"upload": {"scheme": "fp16", "block_size": 128}}, "block_size: scheme fp16 does not"),
        ({"broadcast": {"scheme": "topk"}}, "broadcast.scheme: topk sends a change"),
        ({"broadcast": {"scheme": "sign"}}, "broadcast.scheme: sign brings every small value"),
        ({"broadcast": {"scheme": "int8", "error_feedback": True}}, "broadcast.error_feedback"),
    ],
)
def test_compression_refuses_what_it_cannot_do_naming_the_key(compression, message):
    from fedumm.config import RunConfig

    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate({"federation": {"compression": compression}})

"""A client's local update on a tiny model (seconds): what it sends, what it keeps, and how the
strategy's client side and the federation's terms reach its steps."""

import pytest
import torch

from fedumm.config import FederationConfig
from fedumm.dp_sgd import DPSGDSetting
from fedumm.federation.client import ClientData, Federated, local_schedule, local_update
from fedumm.federation.strategies.fedavg import FedAvg
from fedumm.models.lora import get_adapter
from fedumm.training import Learner, Schedule, TrainingHooks
from tests.test_training import BATCH, DATA, TinyLM

CLIENT = ClientData("site-3", DATA)


def _learner() -> Learner:
    torch.manual_seed(0)
    return Learner(TinyLM(), BATCH)


class CountingSteps(TrainingHooks):
    def __init__(self):
        self.steps = 0

    def before_step(self, model):
        self.steps += 1


class Recording(FedAvg):
    """FedAvg's client side, noting what local_update asks of it; it keeps its step count in
    the client's state and sends only the output layer."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def client_start(self, message, state, initial):
        self.asked.append("start")
        return {k: v + 1.0 for k, v in message.items()}

    def client_hooks(self, model, message, state):
        self.asked.append("hooks")
        return CountingSteps()

    def client_finish(self, message, trained, state, hooks):
        self.asked.append("finish")
        state["steps"] = torch.tensor(float(hooks.steps))
        return {k: v for k, v in trained.items() if k.startswith("out.")}


def test_an_update_reports_the_clients_steps_and_samples_on_the_cpu():
    learner = _learner()
    update = local_update(learner, CLIENT, get_adapter(learner.model), Schedule(3, 4, 0.05, 0))
    assert (update.client_id, update.num_samples, update.num_steps) == ("site-3", len(DATA), 3)
    assert update.metrics.keys() == {"loss", "train_seconds"} and update.metrics["loss"] > 0
    assert update.params.keys() == get_adapter(learner.model).keys()
    assert {v.device.type for v in update.params.values()} == {"cpu"}


def test_plain_training_is_fedavgs_client_side():
    learner = _learner()
    start = get_adapter(learner.model)
    plain = local_update(learner, CLIENT, start, Schedule(3, 4, 0.05, 0)).params
    fedavg = local_update(learner, CLIENT, start, Schedule(3, 4, 0.05, 0), Federated(FedAvg(), {}))
    assert all(torch.equal(plain[k], fedavg.params[k]) for k in plain)
    assert any(not torch.equal(plain[k], start[k]) for k in plain)  # it trained


def test_the_strategy_says_where_training_starts_how_it_runs_and_what_goes_up():
    learner, strategy, state = _learner(), Recording(), {}
    start = get_adapter(learner.model)
    federated = Federated(strategy, state)
    update = local_update(learner, CLIENT, start, Schedule(4, 4, 0.0, 0), federated)
    assert strategy.asked == ["start", "hooks", "finish"]
    assert set(update.params) == {"out.weight", "out.bias"}
    assert torch.equal(update.params["out.bias"], start["out.bias"] + 1.0)  # lr 0: the start
    assert state["steps"].item() == 4 and state["steps"].device.type == "cpu"


def test_federated_of_a_config_carries_only_the_terms_it_enables():
    plain = Federated.of(FederationConfig(), FedAvg(), {})
    assert plain.regularization is None and plain.dp_sgd is None and plain.initial is None
    cfg = FederationConfig(
        dp_sgd={"enabled": True, "clip_norm": 0.5, "noise_multiplier": 1.5},
        seeded_privacy_noise=True,
        adaptive_regularization={"enabled": True, "mu": 0.2},
    )
    federated = Federated.of(cfg, FedAvg(), {}, {"w": torch.zeros(1)})
    assert federated.dp_sgd == DPSGDSetting(0.5, 1.5, seeded_noise=True)
    assert federated.regularization.mu == 0.2 and set(federated.initial) == {"w"}


def test_a_local_schedule_is_the_configs_unless_the_rate_is_given():
    cfg = FederationConfig(batch_size=6, lr=0.01, optimizer="sgd", max_grad_norm=None)
    schedule = local_schedule(cfg, 7, seed=11)
    assert schedule == Schedule(7, 6, 0.01, 11, 0.0, None, "sgd")
    assert local_schedule(cfg, 7, 11, lambda step: 0.5 / (step + 1)).lr_at(4) == pytest.approx(0.1)

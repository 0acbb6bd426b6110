"""SCAFFOLD (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), Algorithm 1 with option II control variates.

Server control c and client controls c_i (kept on each client), all zero at the start.
Client i, from the global x, at every local step:   y <- y - eta_l * (g_i(y) - c_i + c)
after K steps:   c_i+ = c_i - c + (x - y) / (K * eta_l)          (option II)
                 sends Delta y_i = y - x and Delta c_i = c_i+ - c_i
Server:          x <- x + eta_g * mean_{i in S} Delta y_i,   c <- c + (1/N) * sum_{i in S} Delta c_i
(uniform means over the sampled clients S and all N clients, as in the paper).

Under SGD, option II's c_i+ is exactly the mean of the (clipped) minibatch gradients the client
saw, g_bar_i: y = x - eta_l * sum_k (g_k - c_i + c) gives (x - y) / (K eta_l) = g_bar_i - c_i + c.
We compute it as g_bar_i, which stays in gradient units under AdamW too (where (x - y) / (K eta_l)
would be an Adam step, not a gradient); a test checks the identity under SGD.

Compression (federation.compression) applies to Delta y_i only: Delta c_i travels exactly, since
c must stay the mean of the c_i the clients hold (a lossy Delta c_i would drift c away from it
round after round); the broadcast's c is compressed like the adapter.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams
from fedumm.federation.update import Params
from fedumm.models.lora import adapter_parameters
from fedumm.training import TrainingHooks

CONTROL = "control/"


def _split(message: Params) -> tuple[Params, Params]:
    """(adapter, control) halves of a message."""
    adapter = {k: v for k, v in message.items() if not k.startswith(CONTROL)}
    control = {k[len(CONTROL) :]: v for k, v in message.items() if k.startswith(CONTROL)}
    return adapter, control


class ControlVariateCorrection(TrainingHooks):
    """Adds c - c_i to every local gradient and accumulates the raw gradients for c_i+."""

    def __init__(self, model: torch.nn.Module, c: Params, c_i: Params):
        self.live = {k: p for k, p in adapter_parameters(model).items() if p.requires_grad}
        self.correction = {k: c[k] - c_i[k] for k in self.live}
        self.gradient_sum = {k: torch.zeros_like(p) for k, p in self.live.items()}
        self.steps = 0

    def before_step(self, model: torch.nn.Module) -> None:
        for k, p in self.live.items():
            if p.grad is not None:
                self.gradient_sum[k] += p.grad
                p.grad += self.correction[k]
        self.steps += 1

    def mean_gradient(self) -> Params:
        return {k: g / max(self.steps, 1) for k, g in self.gradient_sum.items()}


class Scaffold(Strategy):
    name = "scaffold"
    paper = "Karimireddy et al., ICML 2020"
    compresses = "the adapter's change up (Delta c_i exactly, fp32), the adapter and c down"
    state_attrs = ("c",)
    exact_prefixes = (CONTROL,)  # Delta c_i: never compressed

    class Params(StrategyParams):
        server_lr: float = Field(1.0, gt=0, description="Server step size eta_g.")

    def __init__(self, context=None, **hyperparameters):
        super().__init__(context, **hyperparameters)
        self.c: Params = {}

    def _server_control(self, global_params: Params) -> Params:
        if not self.c:
            self.c = {k: torch.zeros_like(v) for k, v in global_params.items()}
        return self.c

    def broadcast(self, global_params):
        c = self._server_control(global_params)
        return {**global_params, **{CONTROL + k: v for k, v in c.items()}}

    def upload_template(self, global_params, client_id):
        return self.broadcast(global_params)

    def aggregate(self, global_params, updates):
        c = self._server_control(global_params)
        eta, n_sampled = self.hp["server_lr"], len(updates)
        halves = [_split(u.params) for u in updates]
        for k in c:
            c[k] = c[k] + sum(dc[k] for _, dc in halves) / self.context.num_clients
        return {
            k: x + eta * sum(y[k] - x for y, _ in halves) / n_sampled
            for k, x in global_params.items()
        }

    def client_start(self, message, state, initial):
        return _split(message)[0]

    def client_hooks(self, model, message, state):
        adapter, c = _split(message)
        for k, v in adapter.items():
            state.setdefault(k, torch.zeros_like(v))
        return ControlVariateCorrection(model, c, state)

    def client_finish(self, message, trained, state, hooks):
        new = hooks.mean_gradient()
        delta = {CONTROL + k: new.get(k, state[k]) - state[k] for k in trained}
        state.update(new)
        return {**trained, **delta}

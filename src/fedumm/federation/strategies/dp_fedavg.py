"""DP-FedAvg: client-level differential privacy (McMahan et al., ICLR 2018, "Learning
Differentially Private Recurrent Language Models").

Each client's update Delta_k = theta_k - theta is clipped to L2 norm C; the server adds Gaussian
noise of standard deviation z * C per coordinate to their sum and divides by the number of
clients that answered:
    theta <- theta + (1 / |S|) * (sum_k clip_C(Delta_k) + N(0, (z C)^2 I))
Weights are uniform: sample-count weights would let one client move the model by more than
C / |S|. After T rounds with sampling rate q = |S| / N the privacy loss (epsilon, delta) comes
from Opacus's RDP accountant (which assumes Poisson sampling of clients; we sample a fixed
number without replacement, the usual approximation). Amplification by sampling holds only if
nobody can predict who is sampled: outside a seeded simulation the server draws each round's
clients from the operating system (server.py). Cyclic sampling is predictable (a cycle tells
who trains next), so it is accounted with q = 1: every round counted as if it held every
client, an upper bound on what each client spends.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedumm.federation.strategies.base import Strategy, StrategyParams
from fedumm.federation.strategies.norm_clipping import clip_to_norm
from fedumm.privacy_random import privacy_random


def privacy_spent(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """epsilon after `rounds` Gaussian-mechanism steps, from Opacus's RDP accountant
    (infinite without noise)."""
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta))


class DPFedAvg(Strategy):
    name = "dp_fedavg"
    paper = "McMahan et al., ICLR 2018"
    state_attrs = ("progress",)

    class Params(StrategyParams):
        # clip_norm 4: about the norm of an honest 10-20 step LoRA update of the built-in model,
        # so clipping alone costs little (measured: 0.5 stops learning altogether).
        clip_norm: float = Field(
            4.0, gt=0, description="Bound C on each client's update norm, so on its influence."
        )
        noise_multiplier: float = Field(
            1.0, ge=0, description="Noise std / clip_norm, z; 0 = no privacy guarantee."
        )
        target_delta: float = Field(
            1e-5, gt=0, lt=1, description="delta the epsilon is reported for."
        )

    def __init__(self, context=None, **hyperparameters):
        super().__init__(context, **hyperparameters)
        self.progress = {"rounds": torch.tensor(0)}

    def aggregate(self, global_params, updates):
        self.progress["rounds"] += 1
        clip, z = self.hp["clip_norm"], self.hp["noise_multiplier"]
        noise = privacy_random(
            self.context.seeded_noise, self.context.seed, int(self.progress["rounds"]), 0xD9
        )
        total = {k: torch.zeros_like(v) for k, v in global_params.items()}
        for u in updates:
            delta = {k: u.params[k] - v for k, v in global_params.items()}
            for k, d in clip_to_norm(delta, clip).items():
                total[k] += d
        return {
            k: v + (total[k] + noise.normal(v.shape, z * clip)) / len(updates)
            for k, v in global_params.items()
        }

    def summary(self, sampled_per_round: int) -> dict:
        rounds = int(self.progress["rounds"])
        cyclic = self.context.client_sampling == "cyclic"
        q = 1.0 if cyclic else sampled_per_round / self.context.num_clients
        delta = self.hp["target_delta"]
        epsilon = privacy_spent(self.hp["noise_multiplier"], q, rounds, delta)
        return {
            "privacy": {
                "epsilon": epsilon if math.isfinite(epsilon) else None,  # None: no guarantee
                "delta": delta,
                "noise_multiplier": self.hp["noise_multiplier"],
                "clip_norm": self.hp["clip_norm"],
                "sample_rate": q,
                "rounds": rounds,
                "accountant": "opacus RDPAccountant",
                "sampling": "cyclic (predictable: accounted with q = 1)"
                if cyclic
                else "run seed (a simulation)"
                if self.context.seeded_noise
                else "operating system",
            }
        }

"""FFA-LoRA (Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning").

A stays frozen at its shared random init (the same seed on every party), so only B trains and
travels; with A common to all clients, averaging B is exact:
    B_{t+1} = sum_k p_k B_k,   and   sum_k p_k B_k A_0 = B_{t+1} A_0
Half the factor traffic of FedAvg (for square layers), in both directions.
"""

from __future__ import annotations

from fedumm.federation.strategies.base import Strategy, sample_weights, weighted_average
from fedumm.models.lora import factor_of


def _b_only(params):
    return {k: v for k, v in params.items() if factor_of(k) == "lora_B"}


class FFALoRA(Strategy):
    name = "ffa_lora"
    needs_lora = True
    paper = "Sun et al., ICLR 2024"
    compresses = "B's change up, B down (A never travels)"
    aggregates_weighted_mean = True
    frozen = ("lora_A",)

    def broadcast(self, global_params):
        return _b_only(global_params)

    def upload_template(self, global_params, client_id):
        return _b_only(global_params)

    def aggregate(self, global_params, updates):
        b = weighted_average([u.params for u in updates], sample_weights(updates))
        return {**global_params, **b}

    def client_start(self, message, state, initial):
        return {**initial, **message}

    def client_finish(self, message, trained, state, hooks):
        return _b_only(trained)

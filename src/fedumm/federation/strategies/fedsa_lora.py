"""FedSA-LoRA (Guo et al., ICLR 2025, "Selective Aggregation for Low-Rank Adaptation in
Federated Learning").

A learns what is common to all clients, B what is specific to each: only A is shared,
    A_{t+1} = sum_k p_k A_k,   B_k stays on client k,
and each client's model is (A_{t+1}, B_k). The model is personalized, so evaluation averages
each client's own model on the test set.
"""

from __future__ import annotations

from fedumm.federation.strategies.base import Strategy, sample_weights, weighted_average
from fedumm.models.lora import factor_of


def _only(params, factor):
    return {k: v for k, v in params.items() if factor_of(k) == factor}


class FedSALoRA(Strategy):
    name = "fedsa_lora"
    needs_lora = True
    paper = "Guo et al., ICLR 2025"
    compresses = "A's change up (B never leaves the client), A down"
    aggregates_weighted_mean = True
    personalized = True

    def broadcast(self, global_params):
        return _only(global_params, "lora_A")

    def upload_template(self, global_params, client_id):
        return _only(global_params, "lora_A")

    def aggregate(self, global_params, updates):
        a = weighted_average([u.params for u in updates], sample_weights(updates))
        return {**global_params, **a}

    def client_start(self, message, state, initial):
        return {**initial, **_only(state, "lora_B"), **message}

    def client_finish(self, message, trained, state, hooks):
        state.update(_only(trained, "lora_B"))
        return _only(trained, "lora_A")

    def personal_adapter(self, global_params, state):
        return {**global_params, **_only(state, "lora_B")}

"""FedEx-LoRA (Singhal et al., ACL 2025, "FedEx-LoRA: Exact Aggregation for Federated and
Efficient Fine-Tuning of Foundation Models").

Averaging A and B separately (FedIT) is inexact: mean(B) mean(A) != mean(B A). FedEx-LoRA keeps
the averaged factors and folds the residual into the frozen weight, with s = alpha / r:
    A' = sum_k p_k A_k,   B' = sum_k p_k B_k
    W <- W + s * (sum_k p_k B_k A_k - B' A')
so that W + s B' A' equals the weighted average of the clients' effective weights exactly.
The message down carries the dense folded delta as well as the factors.
"""

from __future__ import annotations

from fedumm.federation.strategies.base import Strategy, sample_weights, weighted_average
from fedumm.models.lora import FOLD, factor_pairs


class FedExLoRA(Strategy):
    name = "fedex_lora"
    needs_lora = True
    paper = "Singhal et al., ACL 2025"
    folds_into_base = True

    def aggregate(self, global_params, updates):
        p = sample_weights(updates)
        mean = weighted_average([u.params for u in updates], p)
        out = {**global_params, **mean}
        pairs = [factor_pairs(u.params) for u in updates]
        for module, (a, b) in factor_pairs(mean).items():
            exact = sum(pk * (pair[module][1] @ pair[module][0]) for pk, pair in zip(p, pairs))
            residual = (self.context.lora_alpha / a.shape[0]) * (exact - b @ a)
            key = FOLD + module
            out[key] = out[key] + residual if key in out else residual
        return out

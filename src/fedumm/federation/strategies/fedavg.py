"""FedAvg (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data").

Update rule, with p_k = n_k / sum_j n_j over the clients that answered this round:
    theta_{t+1} = sum_k p_k * theta_k
Applied to LoRA adapters this is FedIT: A and B are averaged separately, so the product is not
the average of the products (see `fedex_lora.py` and `flora.py` for the exact alternatives).
"""

from __future__ import annotations

from fedumm.federation.strategies.base import Params, Strategy, sample_weights, weighted_average
from fedumm.federation.update import ClientUpdate


class FedAvg(Strategy):
    name = "fedavg"
    paper = "McMahan et al., AISTATS 2017"
    aggregates_weighted_mean = True

    def aggregate(self, global_params: Params, updates: list[ClientUpdate]) -> Params:
        return weighted_average([u.params for u in updates], sample_weights(updates))

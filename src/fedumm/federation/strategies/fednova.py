"""FedNova (Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization").

Clients that take more local steps pull FedAvg towards their own objective. FedNova normalises
each client's update by its number of local steps tau_k (a_k = tau_k, the vanilla-SGD case):
    d = sum_k p_k (theta_k - theta) / tau_k,    tau_eff = sum_k p_k tau_k
    theta <- theta + tau_eff * d
Equal tau_k gives FedAvg exactly. Steps differ when `federation.local_epochs` is set and clients
hold different amounts of data.
"""

from __future__ import annotations

from fedumm.federation.strategies.base import Strategy, sample_weights


class FedNova(Strategy):
    name = "fednova"
    paper = "Wang et al., NeurIPS 2020"

    def aggregate(self, global_params, updates):
        p = sample_weights(updates)
        tau_eff = sum(pk * u.num_steps for pk, u in zip(p, updates))
        return {
            k: x + tau_eff * sum(pk * (u.params[k] - x) / u.num_steps for pk, u in zip(p, updates))
            for k, x in global_params.items()
        }

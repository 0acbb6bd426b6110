"""FedAdam (Reddi et al., ICLR 2021): v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2.
The shared server step is in `fedopt.py`."""

from __future__ import annotations

from fedumm.federation.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"
    paper = "Reddi et al., ICLR 2021"
    defaults = {**FedOpt.defaults, "beta2": 0.99}

    def second_moment(self, v, delta_sq):
        return self.hp["beta2"] * v + (1 - self.hp["beta2"]) * delta_sq

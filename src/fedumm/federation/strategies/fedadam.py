"""FedAdam (Reddi et al., ICLR 2021): v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2.
The shared server step is in `fedopt.py`."""

from __future__ import annotations

from pydantic import Field

from fedumm.federation.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"
    paper = "Reddi et al., ICLR 2021"

    class Params(FedOpt.Params):
        beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay beta2.")

    def second_moment(self, v, delta_sq):
        return self.hp["beta2"] * v + (1 - self.hp["beta2"]) * delta_sq

"""FedYogi (Reddi et al., ICLR 2021):
    v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)
an additive, sign-controlled update that grows v more slowly than Adam's.
The shared server step is in `fedopt.py`."""

from __future__ import annotations

import torch

from fedumm.federation.strategies.fedadam import FedAdam
from fedumm.federation.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"
    paper = "Reddi et al., ICLR 2021"
    Params = FedAdam.Params  # FedAdam's: FedOpt's and the second moment's beta2

    def second_moment(self, v, delta_sq):
        return v - (1 - self.hp["beta2"]) * delta_sq * torch.sign(v - delta_sq)

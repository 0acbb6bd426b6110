"""FedAdagrad (Reddi et al., ICLR 2021): v_t = v_{t-1} + Delta_t^2.
The shared server step is in `fedopt.py`."""

from __future__ import annotations

from fedumm.federation.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    paper = "Reddi et al., ICLR 2021"

    def second_moment(self, v, delta_sq):
        return v + delta_sq

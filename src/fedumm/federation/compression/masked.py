"""Quantized uploads under secure aggregation: int8 / int4 integers go into the masked field as
they are, so masked traffic shrinks with them (issue 38).

Blockwise quantization (blockwise.py) gives each client and block a scale of its own, and
integers of different scales do not add up under masks. Here every client uses one scale,
s = secure_range / L (L = 127 for int8, 7 for int4), fixed by the config: a client clips its
change x (from what it received, plus error feedback's residual) to +-secure_range and rounds
x / s to an integer q in [-L, L] (stochastically, seeded as every upload's rounding is, or to
the nearest). It masks w q and its weight w (an integer: 1 under client_weights equal, its
samples otherwise) in the integers mod 2^m (secure_aggregation.Ring), m the fewest bits whose
signed residues hold L * W, where W is the most a round's weights can sum to: the sum
sum_v w_v q_v, at most L * W in magnitude, cannot wrap, whoever survives. The server reads the
signed sum, checks |sum| <= L * sum_v w_v (what clients within range can make), and scales it
back: the weighted mean change s * sum_v w_v q_v / sum_v w_v, which it adds to its own exact
copy of what the clients received.

W is computed by every party from the config alone (none has to trust another's word): the
clients sampled per round times the largest weight one can have: 1 (equal weights), the cap
(max_claimed_samples), or the largest partition (every party splits the data the same). A
client whose weight is above it, or whose values are not finite, withdraws.

The whole upload is one flat vector (its tensors in sorted order, then w), so its one tensor
travels in the smallest integer container of m bits: 2 clients of equal weight sum int8 in
9 bits (int16 words, a quarter of fixed point's int64), int4 in 5 (int8 words, an eighth).
Clipping is what one shared scale costs: a change beyond +-secure_range is cut (error
feedback carries the rest to the next round). Shared-scale integers summed mod 2^m under
secure aggregation, with the modulus sized against wrapping, are as in Bonawitz et al.,
Asilomar 2019 ("Federated Learning with Autotuned Communication-Efficient Secure
Aggregation") and Kairouz et al., ICML 2021 ("The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation"), without their rotation and noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from fedumm.config import CodecConfig, FederationConfig
from fedumm.federation.compression import RESIDUAL
from fedumm.federation.compression.blockwise import stochastic_round
from fedumm.federation.secure_aggregation import ProtocolError, Ring
from fedumm.federation.update import Params

LEVELS = {"int8": 127, "int4": 7}
WORDS = "secure_aggregation.quantized"  # the masked upload's one tensor: w q, then w


@dataclass(frozen=True)
class SharedScale:
    """A run's quantization into the masked field: L `levels`, the `secure_range` s * L, the
    `largest_weight` one client may mask and `total_weight` W a round's weights can sum to."""

    levels: int
    secure_range: float
    largest_weight: int
    total_weight: int
    stochastic: bool = True

    @classmethod
    def of(
        cls, upload: CodecConfig, per_round: int, equal: bool, cap: int | None, sizes: Iterable[int]
    ) -> SharedScale | None:
        """For `upload` compression with `per_round` clients a round, weighed the same
        (`equal`), up to `cap`, or by their partitions' `sizes`; None unless int8 or int4."""
        if upload.scheme not in LEVELS:
            return None
        largest = 1 if equal else cap if cap is not None else max(sizes, default=1)
        stochastic = upload.rounding == "stochastic"
        return cls(
            LEVELS[upload.scheme], upload.secure_range, largest, per_round * largest, stochastic
        )

    @classmethod
    def of_run(cls, fed: FederationConfig, sizes: Iterable[int]) -> SharedScale | None:
        """As a client computes it from its config and the partition's `sizes`."""
        cap = fed.max_claimed_samples if fed.client_weights == "capped" else None
        equal = fed.client_weights == "equal"
        return cls.of(fed.compression.upload, fed.sampled_per_round, equal, cap, sizes)

    @property
    def scale(self) -> float:
        return self.secure_range / self.levels

    @property
    def ring(self) -> Ring:
        """The integers mod 2^m in which no round's sum wraps."""
        return Ring.holding(self.levels * self.total_weight)

    def quantize(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flat `x` clipped to +-secure_range, as integers q in [-L, L] (int64) of scale s;
        ProtocolError if a value is not finite."""
        x = x.double()
        if not bool(torch.isfinite(x).all()):
            raise ProtocolError("the change has NaN or infinite values: it cannot be masked")
        y = x.clamp(-self.secure_range, self.secure_range) / self.scale
        return stochastic_round(y, generator).clamp_(-self.levels, self.levels).long()

    def words(self, q: torch.Tensor, weight: int) -> np.ndarray:
        """[w q, w] as uint64 words (residues mod 2^64), once q and w are checked to be what
        the modulus was sized for; ProtocolError otherwise (the client withdraws)."""
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ProtocolError(f"a weight of {weight!r} is not an integer")
        if not 1 <= weight <= self.largest_weight:
            raise ProtocolError(
                f"a weight of {weight}, outside the 1..{self.largest_weight} the masked sum "
                "was sized for"
            )
        top = int(q.abs().max()) if q.numel() else 0
        if top > self.levels:
            raise ProtocolError(f"a quantized value of {top}, outside +-{self.levels}")
        values = torch.cat([q.long() * weight, torch.tensor([weight])])
        return values.numpy().view(np.uint64)

    def template(self, upload_template: Params) -> Params:
        """The masked upload's layout for an upload of `upload_template`'s tensors."""
        count = sum(v.numel() for v in upload_template.values()) + 1
        return {WORDS: torch.zeros(count, dtype=self.ring.dtype)}

    def mean(self, total: np.ndarray, template: Params, reference: Params) -> tuple[Params, int]:
        """(The weighted mean upload, the weights' sum) from the unmasked sum `total` (uint64
        words mod 2^m) of uploads of `template`'s tensors, each the change from `reference`'s
        (0 where it has none); ProtocolError for a sum no clients within range can make."""
        signed = self.ring.signed(total)
        weight, sums = int(signed[-1]), torch.from_numpy(signed[:-1].copy())
        if not 1 <= weight <= self.total_weight:
            raise ProtocolError(
                f"the weights sum to {weight}, outside the 1..{self.total_weight} of a round"
            )
        top = int(sums.abs().max()) if sums.numel() else 0
        if top > self.levels * weight:
            raise ProtocolError(
                f"a summed value of {top}, beyond the {self.levels} x {weight} clients within "
                "range can make"
            )
        change = unflatten(sums.double() * self.scale / weight, template)
        mean = {k: reference[k].double() + v if k in reference else v for k, v in change.items()}
        return mean, weight


@dataclass
class MaskedUpload:
    """One client's quantization of its round's upload: its change from `reference` (what it
    received), plus the residual kept in `state` with `error_feedback`; `seed` draws the
    stochastic rounding."""

    shared: SharedScale
    reference: Params
    state: Params
    error_feedback: bool
    seed: int

    def encode(self, upload: Params, weight: int) -> tuple[dict[str, np.ndarray], Params]:
        """({WORDS: [w q, w] as uint64}, the state's new residuals: what quantization dropped,
        to keep once the upload leaves); ProtocolError if it cannot be masked."""
        keys = sorted(upload)
        changes = {}
        for k in keys:
            base = self.reference.get(k)
            change = upload[k].float() if base is None else upload[k].float() - base.float()
            if self.error_feedback and RESIDUAL + k in self.state:
                change = change + self.state[RESIDUAL + k]
            changes[k] = change
        x = torch.cat([changes[k].reshape(-1) for k in keys]) if keys else torch.zeros(0)
        stochastic = self.shared.stochastic
        generator = torch.Generator().manual_seed(self.seed) if stochastic else None
        q = self.shared.quantize(x, generator)
        words = {WORDS: self.shared.words(q, weight)}
        if not self.error_feedback:
            return words, {}
        dropped = unflatten(x.double() - q.double() * self.shared.scale, changes)
        return words, {RESIDUAL + k: v.float() for k, v in dropped.items()}


def unflatten(flat: torch.Tensor, template: Params) -> Params:
    """`flat` cut into `template`'s tensors (sorted by key), each of its shape."""
    keys = sorted(template)
    sizes = [template[k].numel() for k in keys]
    return {k: v.view(template[k].shape) for k, v in zip(keys, flat.split(sizes))}

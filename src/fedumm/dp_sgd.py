"""Sample-level DP-SGD inside a client (Abadi et al., CCS 2016, "Deep Learning with Differential
Privacy"), on Opacus's per-sample gradients of the LoRA tensors.

Each step, every sample's gradient of the task loss g_i (all trainable tensors together) is
clipped to L2 norm C, and Gaussian noise of standard deviation z * C per coordinate is added to
their sum:
    g = (1 / B) * (sum_i g_i * min(1, C / ||g_i||) + N(0, (z C)^2 I))
A data-independent part of the gradient (FedProx's proximal term) is added back unchanged. After
`steps` steps with sampling rate q = B / n, the client's (epsilon, delta) comes from the same RDP
accountant as DP-FedAvg (which assumes Poisson sampling of each batch; we shuffle, the usual
approximation).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from fedumm.privacy_random import PrivacyRandom, SeededRandom, privacy_random

# Opacus's hooks on a model whose inputs need no gradient (frozen embeddings): expected here.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are")


@dataclass(frozen=True)
class DPSGDSetting:
    """DP-SGD as a client's steps take it: the per-sample bound C, the noise multiplier z, and
    where the randomness comes from (the run seed only where a simulation asks for it)."""

    clip_norm: float
    noise_multiplier: float
    seeded_noise: bool = False

    def __post_init__(self):
        if not self.clip_norm > 0:
            raise ValueError(f"DP-SGD needs a per-sample clip norm > 0, got {self.clip_norm}")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"DP-SGD needs a noise multiplier >= 0, got {self.noise_multiplier}")

    def randomness(self, seed: int) -> PrivacyRandom | SeededRandom:
        """The noise of steps seeded by `seed`; unless seeded, it also draws their batches: the
        accountant's sampling rate B / n holds only if nobody can predict them."""
        return privacy_random(self.seeded_noise, seed, 0xD5)


class DPSGD:
    """Per-sample clipping and noise for the trainable parameters of `model`, while open.

    Opacus hooks the (shared) model's modules to keep per-sample gradients; `close` removes the
    hooks, so other clients and the baselines train the model as before.
    """

    def __init__(
        self, model: torch.nn.Module, setting: DPSGDSetting, noise: PrivacyRandom | SeededRandom
    ):
        from opacus import GradSampleModule

        self.module = GradSampleModule(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip_norm, self.noise_multiplier = setting.clip_norm, setting.noise_multiplier
        self.noise = noise

    def privatize(self) -> torch.Tensor:
        """Replace each .grad by its private version; returns the per-sample norms before
        clipping. Call after backward, before the optimizer step."""
        samples = [p.grad_sample for p in self.params]  # (B, *shape): per-sample gradients
        batch = samples[0].shape[0]
        norms = torch.stack([g.reshape(batch, -1).norm(dim=1) for g in samples]).norm(dim=0)
        scale = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)
        std = self.noise_multiplier * self.clip_norm
        for p, g in zip(self.params, samples):
            data_free = p.grad - g.mean(0)  # e.g. a proximal term: no sample in it
            # drawn on the CPU: the same noise whatever device trains
            noise = self.noise.normal(p.shape, std).to(p.device)
            clipped = torch.einsum("b,b...->...", scale, g)
            p.grad = (clipped + noise) / batch + data_free
            p.grad_sample = None
        return norms

    def close(self) -> None:
        self.module._close()

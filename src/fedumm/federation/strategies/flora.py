"""FLoRA (Wang et al., NeurIPS 2024, "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations").

Clients train fresh LoRA factors (their ranks r_k may differ) each round. The server stacks
them, which makes the aggregate the exact weighted sum of the clients' products:
    A_stack = [p_1 s_1 A_1; ...; p_K s_K A_K],   B_stack = [B_1, ..., B_K]   (s_k = alpha / r_k)
    B_stack A_stack = sum_k p_k s_k B_k A_k
and folds it into the frozen weight, W <- W + B_stack A_stack; LoRA restarts at the next round.
The message down is the folded delta (dense: clients that skipped rounds stay exact), the
message up the client's factors. Compressed, the factors travel as they are (there is no
reference: they start fresh each round); top-k and error feedback are refused, since zeroing
most of a fresh factor pair breaks the product the stacking sums, and a residual of this
round's factors means nothing to the next round's.
"""

from __future__ import annotations

import torch

from fedumm.federation.strategies.base import Strategy, sample_weights
from fedumm.models.lora import FOLD, factor_of, factor_pairs, is_fold


def resize_rank(template, rank: int):
    """Zero factors shaped like `template`'s but of rank `rank` (A: r x in, B: out x r)."""
    out = {}
    for k, v in template.items():
        if factor_of(k) == "lora_A":
            out[k] = v.new_zeros(rank, v.shape[1])
        elif factor_of(k) == "lora_B":
            out[k] = v.new_zeros(v.shape[0], rank)
    return out


class FLoRA(Strategy):
    name = "flora"
    needs_lora = True
    paper = "Wang et al., NeurIPS 2024"
    compresses = (
        "the fresh factors up as they are (not top-k, no error feedback), the folded delta down"
    )
    mixed_ranks = True
    folds_into_base = True

    @classmethod
    def compression_problems(cls, cfg):
        upload, problems = cfg.federation.compression.upload, []
        if upload.scheme == "topk":
            problems.append(
                (
                    "federation.compression.upload.scheme",
                    "flora stacks each client's fresh LoRA factors, which top-k would mostly "
                    "zero (there is no previous round's factor to send a change from); use "
                    "fp16, bf16, int8 or int4",
                )
            )
        if upload.error_feedback:
            problems.append(
                (
                    "federation.compression.upload.error_feedback",
                    "flora's factors restart every round, so a residual of this round's means "
                    "nothing to the next",
                )
            )
        return problems

    def broadcast(self, global_params):
        return {k: v for k, v in global_params.items() if is_fold(k)}

    def upload_template(self, global_params, client_id):
        factors = super().upload_template(global_params, client_id)
        rank = self.context.client_ranks.get(client_id)
        return factors if rank is None else resize_rank(factors, rank)

    def aggregate(self, global_params, updates):
        p = sample_weights(updates)
        pairs = [factor_pairs(u.params) for u in updates]
        out = dict(global_params)
        for module in pairs[0]:
            a_stack = torch.cat(
                [
                    pk * (self.context.lora_alpha / pair[module][0].shape[0]) * pair[module][0]
                    for pk, pair in zip(p, pairs)
                ]
            )
            b_stack = torch.cat([pair[module][1] for pair in pairs], dim=1)
            fold = b_stack @ a_stack
            key = FOLD + module
            out[key] = out[key] + fold if key in out else fold
        return out

    def client_start(self, message, state, initial):
        return {**initial, **message}

"""Parameter counts of published backbones, built from their configs on the meta device."""

from fedumm.models.sizes import published_sizes


def test_totals_match_the_published_models_and_lora_skips_the_vision_tower():
    rows = {(s["model"], s["r"]): s for s in published_sizes(ranks=(8,))}
    llava, paligemma = rows["LLaVA-1.5-7B", 8], rows["PaliGemma-3B", 8]
    assert llava["parameters"] == 7_063_427_072  # as on the model card
    assert paligemma["parameters"] == 2_923_466_480
    # LLaVA's Llama: 32 layers x q, k, v, o (4096 -> 4096) x r (in + out); CLIP's q/k/v excluded
    assert llava["lora_parameters"] == 32 * 4 * 8 * (4096 + 4096)
    # PaliGemma's Gemma-2B: 8 query heads and 1 key/value head of 256
    assert paligemma["lora_parameters"] == 18 * 8 * (2 * (2048 + 2048) + 2 * (2048 + 256))
    smol = rows["SmolVLM-256M (Idefics3)", 8]
    assert smol["parameters"] == 256_484_928  # "256M"; SigLIP's q/k/v excluded below
    assert smol["lora_parameters"] == 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192))
    unified = rows["Chameleon-7B (unified, early fusion)", 8]
    assert unified["lora_parameters"] == llava["lora_parameters"] > 0

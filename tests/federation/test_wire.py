"""What travels: safetensors messages, and their size computed without serializing."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedumm.federation import wire

DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
tensors = st.builds(
    lambda dtype, shape: torch.zeros(shape, dtype=dtype),
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 300), max_size=3).map(tuple),
)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@given(st.dictionaries(names, tensors, max_size=8))
@settings(max_examples=300, deadline=None)
def test_the_computed_size_is_the_serialized_size(params):
    assert wire.num_bytes(params) == len(wire.pack(params))


def test_a_message_round_trips():
    params = {"a.lora_A.weight": torch.randn(4, 3), "b": torch.arange(5)}
    back = wire.unpack(wire.pack(params))
    assert back.keys() == params.keys() and all(torch.equal(back[k], params[k]) for k in params)

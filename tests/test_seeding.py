"""Every random draw derives from the run seed and where it happens."""

from fedumm.seeding import derive_seed, draw_share


def test_a_seed_depends_on_every_part_and_their_order():
    parts = [(0,), (1,), (0, 1), (1, 2), (2, 1), (0, 1, 2), (0, 0xBAD), (0, 0x510)]
    seeds = [derive_seed(*p) for p in parts]
    assert len(set(seeds)) == len(parts)
    assert derive_seed(3, 7) == derive_seed(3, 7)
    assert all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(5, 0) == derive_seed(5)  # why every caller ends on a non-zero tag


def test_draw_share_takes_a_rounded_share_reproducibly():
    ids = [f"site-{k}" for k in range(1, 11)]
    drawn = draw_share(ids, 0.25, seed=5)
    assert len(drawn) == 2 and drawn == sorted(drawn) and set(drawn) <= set(ids)
    assert draw_share(ids, 0.25, seed=5) == drawn
    assert any(draw_share(ids, 0.25, seed=s) != drawn for s in range(6, 12))
    assert draw_share(ids, 0.0, seed=5) == [] and draw_share(ids, 1.0, seed=5) == sorted(ids)

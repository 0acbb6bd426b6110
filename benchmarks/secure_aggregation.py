"""What secure aggregation costs per round: bytes of its key protocol and of the masked uploads,
and seconds on the clients and the server, for 8, 16 and 64 clients, with no dropout and with a
quarter of the clients dropping after masking (their masks recovered from Shamir shares).

Runs the protocol of fedumm.federation.secure_aggregation directly (the same code the engines
run), on adapters of the built-in model's size (rank 4: 43,280 parameters) and of LLaVA-1.5-7B
with LoRA r=8 on q/k/v/o (8,388,608 parameters). Each client's time is the median over the
clients; the round's time is what it would take with the clients in parallel: the slowest
client's share + mask plus the server's work.

    python benchmarks/secure_aggregation.py [--clients 8 16 64] [--sizes 43280 8388608]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedumm.federation import wire
from fedumm.federation.secure_aggregation import ClientSession, ServerSession


def one_round(n: int, size: int, dropped: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = [f"site-{i + 1}" for i in range(n)]
    updates = {u: {"w": torch.randn(size, generator=g)} for u in ids}
    threshold = n // 2 + 1
    clients = {u: ClientSession(u, 1) for u in ids}
    server = ServerSession(1, threshold)
    seconds = {u: 0.0 for u in ids}

    def timed(u, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        seconds[u] += time.perf_counter() - start
        return out

    adverts = {u: timed(u, c.advertise) for u, c in clients.items()}
    t0 = time.perf_counter()
    roster, listed = server.roster(adverts)
    server_seconds = time.perf_counter() - t0
    shares = {u: timed(u, clients[u].share, roster) for u in listed}
    t0 = time.perf_counter()
    inboxes = server.route(shares)
    server_seconds += time.perf_counter() - t0
    masked, plain_bytes, masked_bytes = {}, 0, 0
    for u in ids[dropped:]:  # the first `dropped` clients vanish after receiving their inbox
        timed(u, clients[u].receive, inboxes[u])
        masked[u] = timed(u, clients[u].mask, updates[u], 10.0)
        plain_bytes += len(wire.pack(updates[u]))
        masked_bytes += len(wire.pack(masked[u]))
    request = server.unmask_request(sorted(masked))
    answers = {u: timed(u, clients[u].unmask, request) for u in masked}
    t0 = time.perf_counter()
    total, weight = server.unmask(masked, answers)
    server_seconds += time.perf_counter() - t0
    expected = sum(10.0 * updates[u]["w"].double() for u in masked)
    assert torch.allclose(total["w"], expected, atol=1e-4), "the unmasked sum is wrong"
    assert weight == 10.0 * len(masked), "the weights' sum is wrong"
    protocol = (
        sum(map(len, adverts.values()))
        + len(roster) * len(listed)
        + sum(map(len, shares.values()))
        + sum(map(len, inboxes.values()))
        + len(request) * len(masked)
        + sum(map(len, answers.values()))
    )
    working = [seconds[u] for u in ids[dropped:]]
    return {
        "clients": n,
        "parameters": size,
        "dropped": dropped,
        "threshold": threshold,
        "protocol_bytes": protocol,
        "plain_upload_bytes": plain_bytes,
        "masked_upload_bytes": masked_bytes,
        "client_seconds": statistics.median(working),
        "server_seconds": server_seconds,
        "round_seconds": max(working) + server_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[43_280, 8_388_608])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    one_round(2, 100, 0)  # warm-up: imports and the first key agreements
    print(
        "| clients | adapter parameters | dropped after masking | protocol KB | uploads, plain "
        "-> masked (MB) | client s (median) | server s | round s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for n in args.clients:
            for dropped in (0, n // 4):
                r = one_round(n, size, dropped)
                uploads = (
                    f"{r['plain_upload_bytes'] / 1e6:,.2f} -> {r['masked_upload_bytes'] / 1e6:,.2f}"
                )
                print(
                    f"| {n} | {size:,} | {dropped} | {r['protocol_bytes'] / 1e3:,.1f} | "
                    f"{uploads} | {r['client_seconds']:.3f} | {r['server_seconds']:.3f} | "
                    f"{r['round_seconds']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A model of the cleaner's write amplification, to read tools/bench/gc-wa.sh figures against.

Simulates a log-structured pool of SEGMENTS segments of 1024 blocks, filled to FILL with live
blocks, then overwritten block by block (OVERWRITE passes' worth) with either pattern of
gc-wa.sh: uniform (fio --norandommap: every write picks any block) or permutation (fio's random
map: each pass writes every block once, in random order). The cleaner keeps FREE segments free,
picks victims greedily or by cost-benefit, and moves their live blocks either to the log head
(mixed with new writes) or to a segment of its own (hot/cold separation, as Target does).
WA = (host blocks + moved blocks) / host blocks over the overwrite phase; headers, the write
cache and checkpoints are left out. A model, not a measurement:
    python3 tools/bench/gc-wa-model.py            # the table in docs/PERFORMANCE.md
"""
import random
import sys

SEGMENT = 1024


def simulate(policy, separate, pattern, fill=0.80, segments=128, passes=3.76, free_target=4, seed=1):
    rnd = random.Random(seed)
    live_blocks = int(segments * SEGMENT * fill)
    where = [-1] * live_blocks
    live = [0] * segments
    members = [set() for _ in range(segments)]
    sealed = [0] * segments
    free = list(range(segments - 1, -1, -1))
    heads, used = {}, {}
    clock = 0
    moved = 0

    def put(block, head):
        if head not in heads or used[head] == SEGMENT:
            if head in heads:
                sealed[heads[head]] = clock
            heads[head] = free.pop()
            used[head] = 0
        s = heads[head]
        old = where[block]
        if old >= 0:
            live[old] -= 1
            members[old].discard(block)
        where[block] = s
        live[s] += 1
        members[s].add(block)
        used[head] += 1

    def clean():
        nonlocal moved
        while len(free) < free_target:
            open_segments = set(heads.values())
            best, best_score = None, -1.0
            for s in range(segments):
                if s in open_segments or s in free:
                    continue
                u = live[s] / SEGMENT
                score = 1 - u if policy == "greedy" else (1 - u) * (clock - sealed[s] + 1) / (1 + u)
                if score > best_score:
                    best, best_score = s, score
            for block in list(members[best]):
                put(block, "cleaner" if separate else "host")
                moved += 1
            free.append(best)

    for block in range(live_blocks):
        clean()
        put(block, "host")
    moved = 0
    writes = int(live_blocks * passes)
    order = []
    for _ in range(writes):
        if pattern == "uniform":
            block = rnd.randrange(live_blocks)
        else:
            if not order:
                order = list(range(live_blocks))
                rnd.shuffle(order)
            block = order.pop()
        clock += 1
        clean()
        put(block, "host")
    return (writes + moved) / writes


def main():
    fill = float(sys.argv[1]) / 100 if len(sys.argv) > 1 else 0.80
    print(f"modelled write amplification at {fill:.0%} fill, 3.76 passes of overwrites (gc-wa.sh OVERWRITE=3G on a 1G pool)")
    print(f"{'pattern':<12} {'cleaner':<14} {'mixed':>6} {'separated':>10}")
    for pattern in ("uniform", "permutation"):
        for policy in ("greedy", "cost-benefit"):
            mixed = simulate(policy, False, pattern, fill)
            apart = simulate(policy, True, pattern, fill)
            print(f"{pattern:<12} {policy:<14} {mixed:6.2f} {apart:10.2f}", flush=True)


if __name__ == "__main__":
    main()

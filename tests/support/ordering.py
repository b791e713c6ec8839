"""The per-key order check of the partitioned-topic tests (docs/design.md §15.4).

A handler log is a list of ``"s <key> <seq> <who>"`` (a run started) and ``"d <key> <seq>
<who>"`` (a run completed) lines in the order they happened.  After a worker dies, the event
it was running may run again; what must hold is that no event of a key starts before every
earlier event of that key completed at least once, and that a key's first completions come
in publish (``seq``) order.
"""

from __future__ import annotations

from collections import defaultdict


def order_problems(log: list[str]) -> tuple[dict[str, set[int]], list[str]]:
    """Check the handler log: no event of a key starts before every earlier event of that
    key completed at least once, and a key's first completions come in publish order.
    Returns (completed seqs per key, problems)."""
    done: dict[str, set[int]] = defaultdict(set)
    last_first: dict[str, int] = {}
    problems = []
    for line in log:
        kind, key, raw, _pid = line.split()
        seq = int(raw)
        if kind == "s":
            missing = [m for m in range(seq) if m not in done[key]]
            if missing:
                problems.append(f"{key}/{seq} started before {key}/{missing[:3]} completed")
        elif seq not in done[key]:
            if seq <= last_first.get(key, -1):
                problems.append(f"{key}/{seq} first completed after {key}/{last_first[key]}")
            last_first[key] = seq
            done[key].add(seq)
    return done, problems

"""Pareto fronts of a multi-objective sweep (hydra.sweeper.metric a list): which trials no other beats on every
objective, and the non-domination rank of each (1: on the front; 2: on the front once those are set aside, ...), as
NSGA-II sorts its population (Deb et al. 2002). Plain Python: a sweep's trials are tens to hundreds."""


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """Whether values `a` are at least as good as `b` on every objective and better on one."""
    signs = [1 if d == "maximize" else -1 for d in directions]
    better = [s * x for s, x in zip(signs, a, strict=True)]
    worse = [s * y for s, y in zip(signs, b, strict=True)]
    return all(x >= y for x, y in zip(better, worse, strict=True)) and better != worse


def ranks(values: dict, directions: list[str]) -> dict:
    """{key: non-domination rank} of `values` ({key: one number per objective}); rank 1 is the Pareto front."""
    left, out, level = dict(values), {}, 1
    while left:
        front = [k for k, v in left.items() if not any(dominates(w, v, directions) for w in left.values())]
        out.update(dict.fromkeys(front, level))
        for k in front:
            del left[k]
        level += 1
    return out


def front(values: dict, directions: list[str]) -> list:
    """The keys of `values` on the Pareto front, in their order."""
    rank = ranks(values, directions)
    return [k for k in values if rank[k] == 1]

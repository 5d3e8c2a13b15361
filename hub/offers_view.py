"""What ``cloudhop offers`` prints: the table (identical offers in several regions share a
row), the line naming the providers it leaves out, and the hint when nothing matches."""

from __future__ import annotations

from cloudhop.spawner.offers import NO_GPU, Offer
from cloudhop.spawner.optimizer import effective_price

#: regions a table row names before it says how many more there are
REGIONS_SHOWN = 3
#: entries the "Nearest:" hint names per kind
NEAREST_SHOWN = 6


# -- the table ----------------------------------------------------------------------


def _same_offer(o: Offer) -> tuple:
    """What two offers share when they differ only in region and zones."""
    return (o.provider, o.instance_type, o.gpu, o.gpu_count, o.gpu_memory_gib, o.vcpus,
            o.memory_gib, o.price_hour, o.spot_price_hour, o.price_partial, o.note)


def grouped(offers: list[Offer]) -> list[tuple[Offer, list[str]]]:
    """``offers`` (in their order) with identical offers of several regions merged: each
    first offer with the regions of its group, in order."""
    rows: dict[tuple, tuple[Offer, list[str]]] = {}
    for o in offers:
        _, regions = rows.setdefault(_same_offer(o), (o, []))
        if o.region not in regions:
            regions.append(o.region)
    return list(rows.values())


def regions_cell(regions: list[str]) -> str:
    if len(regions) <= REGIONS_SHOWN:
        return ", ".join(regions)
    return ", ".join(regions[:REGIONS_SHOWN]) + f" +{len(regions) - REGIONS_SHOWN} more"


def _num(value, fmt="{:g}") -> str:
    return "-" if value is None else fmt.format(value)


def table(offers: list[Offer], spot: bool) -> str:
    head = ("PROVIDER", "REGION", "INSTANCE TYPE", "GPU", "GPUS", "GPU GiB", "vCPUs", "RAM GiB", "$/HOUR", "SPOT $/HOUR", "NOTE")
    rows = []
    groups = grouped(offers)
    for o, regions in groups:
        mark = "+" if o.price_partial else ""
        rows.append((
            o.provider, regions_cell(regions), o.instance_type, o.gpu, str(o.gpu_count), _num(o.gpu_memory_gib),
            _num(o.vcpus), _num(o.memory_gib),
            _num(o.price_hour, "{:.4f}") + mark, _num(o.spot_price_hour, "{:.4f}") + (mark if o.spot_price_hour is not None else ""),
            o.note,
        ))
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    right = {4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(head)] + [line(r) for r in rows]
    if any(o.price_partial for o in offers):
        out.append("+ partial price: the GPUs only; the host machine is extra (see the note)")
    shared = f" in {len(groups)} row(s): identical offers in several regions share one" if len(groups) < len(offers) else ""
    out.append(f"{len(offers)} offer(s){shared}, sorted by {'spot' if spot else 'on-demand'} price per hour (USD).")
    return "\n".join(out)


# -- providers left out --------------------------------------------------------------


def hidden_line(hidden: dict[str, str]) -> str:
    """One line: the providers left out, grouped by why (``hidden``: name -> why)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in hidden.items():
        by_reason.setdefault(why, []).append(name)
    parts = [f"{', '.join(names)} ({why})" for why, names in by_reason.items()]
    return f"Not shown, as this hub cannot launch them: {'; '.join(parts)}. --all lists them too."


# -- no match ------------------------------------------------------------------------


def asked(*, gpu=None, count=None, region=None, provider=None, spot=False, max_price=None) -> str:
    """The request in words: ``H100 x 3 in us-east-1, spot, at most 2 $/h``."""
    if gpu and gpu != NO_GPU:
        what = f"{gpu} x {count}" if count is not None else gpu
    elif gpu == NO_GPU:
        what = "no GPU"
    else:
        what = f"{count} GPU(s)" if count is not None else "any offer"
    extra = [f"on {provider}"] if provider else []
    extra += [f"in {region}"] if region else []
    extra += ["spot"] if spot else []
    extra += [f"at most {max_price:g} $/h"] if max_price is not None else []
    return what + (" " + ", ".join(extra) if extra else "")


def _counts(offers: list[Offer]) -> list[int]:
    return sorted({o.gpu_count for o in offers})


def nearest(pool: list[Offer], *, gpu=None, count=None) -> list[str]:
    """What ``pool`` (the listed providers' offers that pass every flag but --gpu and
    --count) has closest to ``gpu`` x ``count``: other counts of that GPU, nearest first,
    then other GPUs with that count, cheapest first."""
    hints = []
    if gpu:
        counts = _counts([o for o in pool if o.gpu.casefold() == gpu.casefold()])
        if count is not None:
            counts = sorted(counts, key=lambda c: (abs(c - count), c))[:NEAREST_SHOWN]
            counts.sort()
        if counts:
            name = next(o.gpu for o in pool if o.gpu.casefold() == gpu.casefold())
            hints.append(f"{name} x {', '.join(map(str, counts))}")
    others: dict[str, float] = {}
    for o in sorted(pool, key=lambda o: effective_price(o) if effective_price(o) is not None else float("inf")):
        if o.gpu == NO_GPU or (gpu and o.gpu.casefold() == gpu.casefold()):
            continue
        if count is None or o.gpu_count == count:
            others.setdefault(o.gpu, o.gpu_count)
    if others and (count is not None or not hints):
        names = list(others)[:NEAREST_SHOWN]
        more = f" (+{len(others) - len(names)} more)" if len(others) > len(names) else ""
        hints.append(", ".join(f"{n} x {count if count is not None else others[n]}" for n in names) + more)
    if not hints and count is not None and not gpu:
        counts = [c for c in _counts(pool) if c or not count]  # "no GPU" is no near miss
        counts = sorted(counts, key=lambda c: (abs(c - count), c))[:NEAREST_SHOWN]
        if counts:
            hints.append("GPU counts " + ", ".join(map(str, sorted(counts))))
    return hints


def _has(o: Offer, gpu, count) -> bool:
    return (not gpu or o.gpu.casefold() == gpu.casefold()) and (count is None or o.gpu_count == count)


def no_match(ask: str, pool: list[Offer], elsewhere: list[Offer], *, gpu=None, count=None,
             unfiltered: list[Offer] = ()) -> str:
    """The message when no listed offer matches: ``ask`` (:func:`asked`), the nearest
    offers of ``pool`` (the listed providers' that pass every flag but --gpu and
    --count, see :func:`nearest`), the cheapest match of ``unfiltered`` (the listed
    providers' offers before --region, --spot and --max-price) when only those flags
    stand in the way, and what the providers left out have (``elsewhere``: their offers
    that pass the other flags)."""
    text = f"No offer matches {ask}."
    hints = nearest(pool, gpu=gpu, count=count)
    if hints:
        text += f" Nearest: {'; '.join(hints)}."
    elif gpu and (also := [o for o in unfiltered if _has(o, gpu, count) and o.price_hour is not None]):
        o = min(also, key=lambda o: o.price_hour)
        text += (f" Without --region, --spot and --max-price: {o.gpu} x {o.gpu_count} from "
                 f"{o.price_hour:.4f} $/h ({o.provider}, {o.region}).")
    elif not pool:
        text += " Nothing passes the other flags either (--region, --spot, --max-price)."
    exact = [o for o in elsewhere if _has(o, gpu, count)]
    if exact:
        text += f" {_providers(exact)} offer(s) it, but this hub cannot launch them (--all lists them)."
    elif not hints and (far := nearest(elsewhere, gpu=gpu, count=count)):
        near = [o for o in elsewhere if _has(o, gpu, None)] or elsewhere
        text += (f" Nearest on {_providers(near)}, which this hub cannot launch (--all lists "
                 f"them): {'; '.join(far)}.")
    return text


def _providers(offers: list[Offer]) -> str:
    return ", ".join(dict.fromkeys(o.provider for o in offers))

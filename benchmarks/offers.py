"""Spawn-form rendering and offer ranking against the size of the catalog.

For catalogs of 1/4x to 4x the shipped one (the real offers, replicated into extra
regions to grow it), measures in this one process:

* **form**: ``CloudhopSpawner.get_options_form`` itself for a user allowed everything
  (provider status, offers, policy filter, the auto pick, JSON, rendering ``form.html``;
  the offers come from one provider that serves the scaled catalog), against two
  baselines run alongside: ``json.dumps`` of the same offers, and KubeSpawner's own
  profile form template rendered with one profile per offer (how a KubeSpawner
  operator would list the same choices).
* **rank**: :func:`cloudhop.spawner.optimizer.rank` for an explicit request
  (aws us-east-1, 8 x H100), an open one (auto, 1 x A100) and a spot one (auto, 1 x L4),
  against a plain ``sorted()`` of the offers by price.

Prints medians (ms) and ratios; goals at 1x: form < 50 ms, rank < 5 ms.

    python benchmarks/offers.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from types import SimpleNamespace

from jinja2 import ChoiceLoader, Environment, PackageLoader

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.catalog import all_catalog_offers
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.optimizer import rank
from cloudhop.spawner.options import LaunchRequest
from cloudhop.spawner.providers.base import Provider

REQUESTS = {
    "explicit": LaunchRequest(provider="aws", region="us-east-1", gpu="H100", gpu_count=8),
    "open": LaunchRequest(gpu="A100", gpu_count=1),
    "spot": LaunchRequest(gpu="L4", gpu_count=1, spot=True),
}


def scaled(offers: list[Offer], factor: float) -> list[Offer]:
    """The catalog shrunk (every n-th offer) or grown (copies in renamed regions)."""
    if factor <= 1:
        step = round(1 / factor)
        return offers[::step]
    out = list(offers)
    for k in range(1, int(factor)):
        out += [dataclasses.replace(o, region=f"{o.region}-x{k}") for o in offers]
    return out


def median_ms(fn, repeat: int) -> float:
    fn()  # warm caches (template compilation, imports)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class ScaledCatalog(Provider):
    """The benchmark's provider: always available, its offers the scaled catalog."""

    name = "catalog"
    display_name = "Catalog (scaled)"
    current: list[Offer] = []

    async def check_available(self):
        return None

    def offers(self):
        return ScaledCatalog.current


def cloudhop_form():
    """The real form path of a spawner for a user with no group (allowed everything)."""
    spawner = CloudhopSpawner(
        user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
        providers=[f"{__name__}:ScaledCatalog"],
    )
    loop = asyncio.new_event_loop()

    def render(offers):
        ScaledCatalog.current = offers
        return loop.run_until_complete(spawner.get_options_form())

    return render


def kubespawner_form():
    env = Environment(loader=ChoiceLoader([PackageLoader("kubespawner", "templates")]))
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    template = env.get_template("form.html")

    def render(offers):
        profiles = [{
            "slug": f"{o.provider}-{o.region}-{o.instance_type}".lower().replace(".", "-").replace("+", "-"),
            "display_name": f"{o.gpu_count} x {o.gpu} on {o.provider} {o.region} ({o.instance_type})",
            "description": f"{o.vcpus} vCPUs, {o.memory_gib} GiB RAM, ${o.price_hour}/h",
            "default": False, "profile_options": {},
        } for o in offers]
        return template.render(profile_list=profiles, user_options={})

    return render


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per figure (median is printed)")
    args = parser.parse_args(argv)

    catalog = all_catalog_offers()
    form = cloudhop_form()
    kube = kubespawner_form()

    print(f"shipped catalog: {len(catalog)} offers (aws, gcp, oci); median of {args.repeat} runs, ms\n")
    head = ("size", "offers", "form", "json.dumps", "ratio", "kube form", "ratio",
            "rank explicit", "rank open", "rank spot", "sorted()", "ratio")
    print("  ".join(f"{h:>13}" for h in head))
    results = {}
    for factor in (0.25, 0.5, 1, 2, 4):
        offers = scaled(catalog, factor)
        t_form = median_ms(lambda: form(offers), args.repeat)
        t_json = median_ms(lambda: json.dumps([o.to_dict() for o in offers]), args.repeat)
        t_kube = median_ms(lambda: kube(offers), args.repeat)
        t_rank = {name: median_ms(lambda r=req: rank(r, offers), args.repeat) for name, req in REQUESTS.items()}
        t_sort = median_ms(lambda: sorted(offers, key=lambda o: (o.price_hour is None, o.price_hour or 0)), args.repeat)
        worst_rank = max(t_rank.values())
        results[factor] = (t_form, max(t_rank.values()))
        row = (f"{factor:g}x", str(len(offers)), f"{t_form:.2f}", f"{t_json:.2f}", f"{t_form / t_json:.2f}",
               f"{t_kube:.2f}", f"{t_form / t_kube:.2f}", f"{t_rank['explicit']:.3f}", f"{t_rank['open']:.3f}",
               f"{t_rank['spot']:.3f}", f"{t_sort:.3f}", f"{worst_rank / t_sort:.2f}")
        print("  ".join(f"{c:>13}" for c in row))

    form_ms, rank_ms = results[1]
    print(
        f"\nfull catalog: form {form_ms:.1f} ms (goal < 50: {'met' if form_ms < 50 else 'NOT met'}), "
        f"rank {rank_ms:.2f} ms worst of 3 requests (goal < 5: {'met' if rank_ms < 5 else 'NOT met'})"
    )
    print("ratios: form / json.dumps and form / KubeSpawner profile form of the same offers; "
          "worst rank / sorted() of the same offers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

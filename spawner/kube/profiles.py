"""Import a Zero-to-JupyterHub ``singleuser.profileList`` as Cloudhop offers.

A z2jh operator keeps their profile list; each profile — and each combination of its
``profile_options`` choices — becomes one Kubernetes offer whose :class:`~.plan.PodPlan`
carries what the profile's ``kubespawner_override`` would have set on KubeSpawner:
image, ``node_selector``, ``tolerations``, ``extra_resource_limits`` (the
``nvidia.com/gpu`` count), CPU and memory, environment, labels and the other
``make_pod`` settings. Overrides merge the way KubeSpawner merges them (profile first,
then each option's chosen value in order; dicts merge recursively, ``None`` removes).

Naming: an offer's ``instance_type`` is the profile's ``slug`` (generated from
``display_name`` exactly as KubeSpawner does when missing). A combination of
non-default choices is ``slug:choice[:choice...]``.

What cannot be imported is reported, not guessed: callables (impossible in YAML),
free-form ``unlisted_choice`` values (Cloudhop's own ``image`` option covers the common
case), and keys that are not KubeSpawner pod settings (``default_url``, a stray
``tag``, a node label written where ``node_selector`` was meant) land in
:attr:`ImportedProfile.ignored` so the operator sees them.

The GPU model comes from the profile's node selector or required node affinity in any
flavour's spelling (GKE accelerator, Karpenter GPU name, GPU feature discovery product,
or a known GPU instance type); a GPU profile that does not say which GPU it targets is
offered as :data:`UNKNOWN_GPU`.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field

from ..offers import NO_GPU, Offer
from ..schema import NAME as _NAME
from .flavours import GPU_RESOURCE, GPU_TOLERATION, gpu_from_selector
from .plan import PASSTHROUGH, PodPlan

#: the GPU name of a profile that asks for ``nvidia.com/gpu`` without saying which model
UNKNOWN_GPU = "GPU"
#: the most offers one profile expands into (its choices multiply)
MAX_COMBINATIONS = 32

# kubespawner_override keys that map onto PodPlan fields.
_PLAN_KEYS = {
    "image", "image_spec", "node_selector", "tolerations", "cpu_limit", "cpu_guarantee",
    "mem_limit", "mem_guarantee", "extra_resource_limits", "extra_resource_guarantees",
    "environment", "extra_labels", "extra_annotations", "node_affinity_required",
    "volumes", "volume_mounts",
}


class ProfileImportError(ValueError):
    """The profile list cannot be read; the message names the profile and field."""


@dataclass(frozen=True)
class ImportedProfile:
    slug: str
    display_name: str
    description: str
    plan: PodPlan
    #: option name -> chosen choice key, for this combination
    choices: dict = field(default_factory=dict)
    #: True for the profile's all-defaults combination
    default_choices: bool = True
    #: the z2jh ``default: true`` profile
    default: bool = False
    #: "key: why" for each setting that was not applied
    ignored: tuple = ()


def load_profile_list(source) -> list:
    """The profile list from ``source``: a list, KubeSpawner's dict form
    (slug -> profile), YAML text, or the path of a YAML file holding either a bare list
    or z2jh values (``singleuser.profileList``)."""
    import yaml

    data = source
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if "\n" not in text and os.path.exists(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ProfileImportError(f"profile list is not valid YAML: {err}") from err
    if isinstance(data, dict) and "singleuser" in data:
        data = (data.get("singleuser") or {}).get("profileList") or []
    if isinstance(data, dict) and "jupyterhub" in data:  # values nested under a parent chart
        return load_profile_list(data["jupyterhub"])
    if isinstance(data, dict):
        data = [dict(p, slug=p.get("slug", k)) if isinstance(p, dict) else p for k, p in data.items()]
    if not isinstance(data, list):
        raise ProfileImportError(f"profile list must be a list of profiles, not {type(data).__name__}")
    return data


def _slugify(text: str) -> str:
    from slugify import slugify  # KubeSpawner's own dependency, same slugs as it makes

    return slugify(text)


def _offer_name(slug: str) -> str:
    return slug if _NAME.fullmatch(slug) else (_slugify(slug) or "profile")


def _merge(target: dict, changes: dict) -> None:
    """KubeSpawner's override rule: dicts merge recursively, None removes a key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)


def _count(value, where: str) -> int:
    try:
        n = float(str(value).strip())
    except ValueError as err:
        raise ProfileImportError(f"{where}: {GPU_RESOURCE} must be a whole number, not {value!r}") from err
    if n != int(n) or n < 0:
        raise ProfileImportError(f"{where}: {GPU_RESOURCE} must be a whole number, not {value!r}")
    return int(n)


def _gib(quantity) -> float | None:
    """``14G``/``8Gi``/``512M`` -> GiB (one decimal)."""
    if quantity in (None, ""):
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?)?\s*", str(quantity))
    if not m:
        return None
    factor = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return round(float(m.group(1)) * factor / 2**30, 1)


def _float(value, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ProfileImportError(f"{where}: must be a number, not {value!r}") from err


def _plan(overrides: dict, where: str) -> tuple[PodPlan, list]:
    """The PodPlan an override dict amounts to, and what was ignored."""
    ignored = []
    kwargs = {}
    for key, value in overrides.items():
        if callable(value):
            ignored.append(f"{key}: a callable cannot be imported")
        elif key in PASSTHROUGH:
            kwargs[key] = value
        elif key not in _PLAN_KEYS:
            hint = " (it looks like a node label: put it under node_selector)" if "/" in key else ""
            ignored.append(f"{key}: not applied, not a pod setting{hint}")

    limits = {str(k): v for k, v in (overrides.get("extra_resource_limits") or {}).items() if v is not None}
    guarantees = {str(k): v for k, v in (overrides.get("extra_resource_guarantees") or {}).items() if v is not None}
    gpu_value = limits.pop(GPU_RESOURCE, None)
    if gpu_value is None:
        gpu_value = guarantees.pop(GPU_RESOURCE, None)
    else:
        guarantees.pop(GPU_RESOURCE, None)
    count = _count(gpu_value, where) if gpu_value is not None else 0

    node_selector = {str(k): str(v) for k, v in (overrides.get("node_selector") or {}).items() if v is not None}
    expressions: list = []
    affinity = overrides.get("node_affinity_required") or []
    if len(affinity) == 1 and set(affinity[0]) <= {"matchExpressions"}:
        expressions = [dict(e) for e in affinity[0].get("matchExpressions") or []]
    elif affinity:
        kwargs["node_affinity_required"] = affinity

    gpu = NO_GPU
    if count:
        gpu = gpu_from_selector(node_selector) or ""
        if not gpu:
            for e in expressions:
                if e.get("operator") == "In" and e.get("values"):
                    found = gpu_from_selector({e["key"]: e["values"][0]})
                    if found:
                        gpu = found
                        break
        gpu = gpu or UNKNOWN_GPU

    tolerations = [dict(t) for t in overrides.get("tolerations") or []]
    if count and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU nodes are tainted on GKE and by the GPU operator; tolerating it is harmless
        tolerations.append(dict(GPU_TOLERATION))

    for key in ("volumes", "volume_mounts"):
        if overrides.get(key):
            kwargs[key] = list(overrides[key].values()) if isinstance(overrides[key], dict) else list(overrides[key])

    image = overrides.get("image") or overrides.get("image_spec") or None
    plan = PodPlan(
        gpu=gpu,
        gpu_count=count,
        node_selector=node_selector,
        match_expressions=tuple(expressions),
        tolerations=tuple(tolerations),
        image=str(image) if image else None,
        cpu_limit=_float(overrides.get("cpu_limit"), f"{where}: cpu_limit"),
        cpu_guarantee=_float(overrides.get("cpu_guarantee"), f"{where}: cpu_guarantee"),
        mem_limit=str(overrides["mem_limit"]) if overrides.get("mem_limit") else None,
        mem_guarantee=str(overrides["mem_guarantee"]) if overrides.get("mem_guarantee") else None,
        extra_resource_limits=limits,
        extra_resource_guarantees=guarantees,
        environment=dict(overrides.get("environment") or {}),
        extra_labels={str(k): str(v) for k, v in (overrides.get("extra_labels") or {}).items() if v is not None},
        extra_annotations={str(k): str(v) for k, v in (overrides.get("extra_annotations") or {}).items() if v is not None},
        make_pod_kwargs=kwargs,
    )
    return plan, ignored


def _options(profile: dict, where: str) -> tuple[list, list]:
    """[(option, [(choice_key, overrides, is_default)])] and what was ignored."""
    out, ignored = [], []
    for name, option in (profile.get("profile_options") or {}).items():
        if not isinstance(option, dict):
            ignored.append(f"profile_options.{name}: empty option")
            continue
        if (option.get("unlisted_choice") or {}).get("enabled"):
            ignored.append(f"profile_options.{name}.unlisted_choice: free-form values are not imported")
        choices = option.get("choices") or {}
        if not choices:
            continue
        listed = []
        has_default = any(c.get("default") for c in choices.values() if isinstance(c, dict))
        for i, (key, choice) in enumerate(choices.items()):
            choice = choice or {}
            is_default = bool(choice.get("default")) if has_default else i == 0
            listed.append((str(key), dict(choice.get("kubespawner_override") or {}), is_default))
        out.append((str(name), listed))
    return out, ignored


def import_profiles(profiles: list) -> list[ImportedProfile]:
    """Every profile and choice combination of a z2jh profile list, in order."""
    result = []
    any_default = any(isinstance(p, dict) and p.get("default") for p in profiles)
    seen = set()
    for index, profile in enumerate(profiles):
        if not isinstance(profile, dict) or not profile.get("display_name") and not profile.get("slug"):
            raise ProfileImportError(f"profileList[{index}]: a profile needs a display_name")
        display = str(profile.get("display_name") or profile["slug"])
        slug = _offer_name(str(profile.get("slug") or _slugify(display)))
        where = f"profile {slug!r}"
        options, option_ignored = _options(profile, where)
        combos = list(itertools.islice(
            itertools.product(*[choices for _, choices in options]), MAX_COMBINATIONS))
        # the all-defaults combination first: it is what the bare profile slug means
        combos.sort(key=lambda combo: not all(d for _, _, d in combo))
        for combo in combos or [()]:
            overrides: dict = {}
            _merge(overrides, dict(profile.get("kubespawner_override") or {}))
            picked = {}
            for (option, _), (key, choice_overrides, _d) in zip(options, combo):
                _merge(overrides, choice_overrides)
                picked[option] = key
            defaults = all(d for _, _, d in combo)
            name = slug if defaults else ":".join([slug] + [k for k, _, d in combo if not d])
            name = _offer_name(name)
            if name in seen:
                continue
            seen.add(name)
            plan, ignored = _plan(overrides, where)
            result.append(ImportedProfile(
                slug=name,
                display_name=display,
                description=str(profile.get("description") or ""),
                plan=plan,
                choices=picked,
                default_choices=defaults,
                default=bool(profile.get("default")) if any_default else index == 0,
                ignored=tuple(option_ignored + ignored),
            ))
    return result


def profile_offer(
    imported: ImportedProfile,
    *,
    provider: str,
    region: str,
    price_per_gpu_hour: float = 0.0,
    cpu_price_hour: float = 0.0,
    available: int | None = None,
    zones: tuple = (),
) -> Offer:
    """The Cloudhop offer for one imported profile (combination)."""
    plan = imported.plan
    label = imported.display_name
    if imported.choices and not imported.default_choices:
        label += " (" + ", ".join(imported.choices.values()) + ")"
    note = f"z2jh profile: {label}"
    if imported.description:
        note += f" - {imported.description}"
    price = price_per_gpu_hour * plan.gpu_count if plan.gpu_count else cpu_price_hour
    return Offer(
        provider=provider,
        region=region,
        instance_type=imported.slug,
        gpu=plan.gpu if plan.gpu_count else NO_GPU,
        gpu_count=plan.gpu_count,
        vcpus=plan.cpu_limit or plan.cpu_guarantee,
        memory_gib=_gib(plan.mem_guarantee) or _gib(plan.mem_limit),
        price_hour=round(price, 4),
        zones=tuple(zones),
        note=note,
        available=available,
    )


__all__ = [
    "ImportedProfile", "ProfileImportError", "UNKNOWN_GPU", "import_profiles",
    "load_profile_list", "profile_offer",
]

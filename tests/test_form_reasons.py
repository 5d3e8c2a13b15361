"""The spawn form says why a choice is greyed out or empty, and a refused option reads
as a sentence: the field, the value, the closest choice and what is allowed, quoted, and
no exception class names. The spawner's progress stream follows each spawn from its
first event."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import pytest
from instant_cloud import NAME, InstantCloud
from jupyterhub.utils import format_exception
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.form_reasons import no_gpu_reasons, provider_choices
from cloudhop.spawner.gpus import probe_gpus
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import OptionError, parse_options
from cloudhop.spawner.providers.local import LocalProvider
from cloudhop.spawner.refusal import Refused
from cloudhop.spawner.schema import choices

OFFERS = [
    Offer("local", "local", "cpu", "none", 0, price_hour=0.0),
    Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, price_hour=0.526),
]


def refused(raw, providers=("local", "aws")) -> OptionError:
    with pytest.raises(OptionError) as err:
        parse_options(raw, OFFERS, providers=list(providers))
    return err.value


# -- messages -----------------------------------------------------------------------


def test_a_choice_called_none_is_quoted_and_the_value_is_set_off_from_the_choices():
    msg = str(refused({"gpu": "Z9"}))
    assert msg == "gpu: unknown gpu 'Z9'. Valid choices: 'none', 'T4'."
    assert "Valid choices: none" not in msg


def test_the_closest_choice_is_named():
    assert str(refused({"gpu": "t5"})) == "gpu: unknown gpu 't5'; did you mean 'T4'? Valid choices: 'none', 'T4'."
    assert str(choices("region", "x", [])) == "region: unknown region 'x'. There is nothing to choose from here."
    long = str(choices("region", "zz", [f"r{i:02}" for i in range(25)]))
    assert long.endswith("'r19' (and 5 more).")


def test_the_clis_flags_word_an_unknown_value_the_same_way():
    from cloudhop.hub.offers_cli import did_you_mean

    assert str(did_you_mean("--gpu", "Z9", ["none", "T4"])) == "--gpu: unknown value 'Z9'. Valid choices: 'none', 'T4'."
    assert str(did_you_mean("--gpu", "t5", ["T4"])) == "--gpu: unknown value 't5'; did you mean 'T4'? Valid choices: 'T4'."
    assert str(did_you_mean("--region", "x", [])) == "--region: unknown value 'x'. There is nothing to choose from here."


def test_values_and_choices_stay_escaped():
    msg = str(choices("gpu", "<b>", ["<i>"]))
    assert "<b>" not in msg and "<i>" not in msg and "&lt;i&gt;" in msg


def test_a_known_provider_this_hub_does_not_enable_is_named_so():
    err = refused({"provider": "aws"}, providers=("local",))
    assert err.field == "provider"
    assert err.message == "'aws' is not enabled on this hub; enabled: 'local'"
    # a name Cloudhop does not know is still an unknown one, with its closest match
    assert "unknown provider 'awz'; did you mean 'aws'?" in str(refused({"provider": "awz"}))


def test_a_refused_spawn_shows_its_message_without_the_exception_class():
    err = Refused("gpu: unknown gpu 'Z9'. Valid choices: 'none'.", reason="bad-option")
    message, _html = format_exception(err)
    assert message == "gpu: unknown gpu 'Z9'. Valid choices: 'none'."
    assert "SpawnException" not in message and "bad-option" not in message
    assert err.status_code == 400 and err.message == message  # the REST answer's message


# -- why a choice is disabled or empty ----------------------------------------------


def test_providers_not_enabled_say_how_an_admin_adds_them():
    statuses = [
        {"name": "local", "display_name": "Local (this machine)", "available": True, "reason": None},
        {"name": "gcp", "display_name": "GCP", "available": False, "reason": "no GCP credentials found"},
        {"name": "oci", "display_name": "OCI", "available": True, "reason": None},
    ]
    choices_ = {p["name"]: p for p in provider_choices(statuses, allowed=["local", "gcp"])}
    assert choices_["local"]["state"] == "available" and choices_["local"]["reason"] is None
    assert choices_["gcp"]["state"] == "unavailable" and choices_["gcp"]["reason"] == "no GCP credentials found"
    assert "oci" not in choices_, "a provider the user's groups may not use stays unnamed"
    assert choices_["aws"] == {
        "name": "aws", "display_name": "AWS", "available": False, "state": "not-enabled",
        "reason": "AWS is not enabled on this hub; an admin adds it with c.CloudhopSpawner.providers"}
    assert choices_["kubernetes"]["display_name"] == "Kubernetes"


def test_places_without_a_gpu_say_why():
    everything = [*OFFERS, Offer("aws", "us-east-1", "c5.large", "none", 0), Offer("aws", "eu-west-1", "c5", "none", 0)]
    allowed = [o for o in everything if o.gpu == "none"]  # a policy without GPUs
    explain = {("local", "local"): "no NVIDIA GPU found on this machine (NVML: Driver Not Loaded)"}
    reasons = no_gpu_reasons(everything, allowed, lambda p, r: explain.get((p, r)))
    assert reasons == {
        "local/local": "no NVIDIA GPU found on this machine (NVML: Driver Not Loaded)",
        "aws/us-east-1": "the policy of your groups allows no GPU here",
        "aws/eu-west-1": "aws offers no GPU in eu-west-1",
    }
    assert no_gpu_reasons(OFFERS, OFFERS, lambda p, r: None) == {"local/local": "local offers no GPU in local"}


def test_nvml_says_why_there_is_no_gpu(monkeypatch):
    monkeypatch.delenv("CLOUDHOP_FAKE_GPUS", raising=False)
    assert probe_gpus("fakes.nvml") == ([], "no NVIDIA GPU found on this machine (NVML: NVML Shared Library Not Found)")
    gpus, why = probe_gpus("no_such_nvml_binding")
    assert gpus == [] and why.startswith("no NVIDIA GPU found on this machine (NVML could not be loaded: ")
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", "[]")
    assert probe_gpus("fakes.nvml") == ([], "no NVIDIA GPU found on this machine (NVML sees none)")
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", json.dumps([{"name": "NVIDIA L4", "memory_gib": 24, "uuid": "GPU-1"}]))
    gpus, why = probe_gpus("fakes.nvml")
    assert [g.model for g in gpus] == ["L4"] and why is None


def test_local_regions_without_gpus_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", json.dumps([{"name": "NVIDIA L4", "memory_gib": 24, "uuid": "GPU-1"}]))
    p = LocalProvider(default_root=str(tmp_path), nvml_module="fakes.nvml", isolation="none",
                      regions={"gpu": {"gpus": "all"}, "cpu": {"gpus": "none"}, "gone": {"gpus": "7"}})
    assert p.no_gpu_reason("gpu") is None
    assert p.no_gpu_reason("cpu") == "region 'cpu' is set up without GPUs (c.LocalProvider.regions)"
    assert p.no_gpu_reason("gone") == "none of the GPUs region 'gone' names is on this machine (c.LocalProvider.regions)"
    monkeypatch.delenv("CLOUDHOP_FAKE_GPUS")
    bare = LocalProvider(default_root=str(tmp_path), nvml_module="fakes.nvml", isolation="none")
    assert bare.no_gpu_reason("local") == "no NVIDIA GPU found on this machine (NVML: NVML Shared Library Not Found)"


async def test_the_form_carries_every_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOUDHOP_FAKE_GPUS", raising=False)
    c = Config()
    c.LocalProvider.default_root = str(tmp_path / "ws")
    c.LocalProvider.isolation = "none"
    c.LocalProvider.nvml_module = "fakes.nvml"
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=["local"], config=c)
    form = await s.get_options_form()
    data = json.loads(re.search(r'id="ch-no-gpu-data">(.*?)</script>', form, re.S).group(1))
    assert data == {"local/local": "no NVIDIA GPU found on this machine (NVML: NVML Shared Library Not Found)"}
    assert re.search(r'<option value="aws" disabled title="AWS is not enabled on this hub; an admin adds it '
                     r'with c.CloudhopSpawner.providers">AWS \(not enabled on this hub\)</option>', form)
    line = re.search(r'<p class="ch-unavailable" id="ch-not-enabled">(.*?)</p>', form, re.S).group(1)
    assert " ".join(line.split()) == ("AWS, GCP, OCI, Lambda Cloud, Azure, DigitalOcean, Yandex Cloud and Kubernetes are not enabled on this hub; an admin adds "
                                      "them with c.CloudhopSpawner.providers.")
    assert 'id="ch-unavailable"' not in form, "no enabled provider is unavailable"
    for why in ("ch-gpu-why", "ch-zone-why", "ch-ray-why"):
        assert f'id="{why}"' in form
    assert "no zones to choose for this offer" in form  # the script's words


# -- progress -----------------------------------------------------------------------


def instant_spawner(cloud) -> CloudhopSpawner:
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=[NAME], node_poll_interval=0.01)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    s.user_options = {"provider": "auto", "gpu": "none"}
    return s


async def test_a_progress_stream_opened_before_start_sees_the_new_spawn_from_its_first_event():
    """The hub marks a spawn pending, and a browser may open its progress stream, before
    ``start`` runs; the stream must show this spawn's events from its plan on, not the
    last spawn's (the hub stops a server, then clears its state, as here)."""
    cloud = InstantCloud()
    s = instant_spawner(cloud)
    await s.start()
    last_node = s.node.id
    await s.stop()
    s.clear_state()

    s.user_options = {"provider": NAME, "instance_type": "cpu-4", "gpu": "none"}  # another plan
    s._spawn_pending = True
    stream = s.progress()
    early = asyncio.ensure_future(stream.__anext__())  # opened before start
    await asyncio.sleep(0)
    await s.start()
    seen = [(await early)["message"]]
    s._spawn_pending = False
    seen += [e["message"] async for e in stream]
    assert seen[0].startswith("Plan: ") and f"first {NAME}/r1/cpu-4" in seen[0], seen
    assert any(s.node.id in m for m in seen) and not any(last_node in m for m in seen), seen
    await s.stop()


async def test_stopping_forgets_the_last_spawns_events():
    s = instant_spawner(InstantCloud())
    await s.start()
    assert s._events
    s.clear_state()  # what the hub does after a stop and before a spawn
    s._spawn_pending = True
    stream = s.progress()
    nothing = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert not nothing.done(), "no event of the last spawn is replayed"
    nothing.cancel()

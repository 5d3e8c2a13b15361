"""c.CloudhopStore.* and c.CloudhopReaper.*: the hub's services' settings, their defaults,
and a bad value refused by name - by the classes and by `cloudhop up`'s config."""

from __future__ import annotations

import json

import pytest
from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from cloudhop.hub.config import CloudhopReaper, CloudhopStore
from cloudhop.hub.up import EMBEDDED_CONFIG


def test_defaults():
    store, reaper = CloudhopStore(), CloudhopReaper()
    assert (store.port, store.s3, store.quota_gib) == (0, {}, 100.0)
    assert (reaper.enabled, reaper.interval, reaper.grace) == (True, 300, 900)


def test_good_values_are_kept():
    c = Config()
    c.CloudhopStore.port = 10101
    c.CloudhopStore.s3 = {"bucket": "snaps", "region": "eu-west-1", "endpoint_url": "http://minio:9000"}
    c.CloudhopReaper.interval = "60"  # a number written as text, as before
    c.CloudhopReaper.grace = 0
    store, reaper = CloudhopStore(config=c), CloudhopReaper(config=c)
    assert store.port == 10101 and store.s3["bucket"] == "snaps"
    assert (reaper.interval, reaper.grace) == (60.0, 0.0)


@pytest.mark.parametrize("cls, name, value, message", [
    (CloudhopStore, "port", 70000, r"^c\.CloudhopStore\.port must be a port number from 1 to 65535, or 0 to pick one, not 70000"),
    (CloudhopStore, "port", -1, r"^c\.CloudhopStore\.port must be a port number"),
    (CloudhopStore, "s3", {"region": "eu-west-1"}, r"^c\.CloudhopStore\.s3\['bucket'\] must be a bucket name, not None"),
    (CloudhopStore, "s3", {"bucket": " "}, r"^c\.CloudhopStore\.s3\['bucket'\] must be a bucket name"),
    (CloudhopStore, "s3", {"bucket": "b", "endpoint": "http://minio"}, r"^c\.CloudhopStore\.s3 has no key 'endpoint'; its keys are bucket, region"),
    (CloudhopStore, "s3", {"bucket": "b", "prefix": 5}, r"^c\.CloudhopStore\.s3\['prefix'\] must be a string, not 5"),
    (CloudhopStore, "s3", {"bucket": "b", "endpoint_url": "minio:9000"},
     r"^c\.CloudhopStore\.s3\['endpoint_url'\] must be an http:// or https:// URL"),
    (CloudhopStore, "quota_gib", -1, r"^c\.CloudhopStore\.quota_gib must be a number of GiB >= 0, not -1"),
    (CloudhopStore, "quota_gib", "lots", r"^c\.CloudhopStore\.quota_gib must be a number of GiB >= 0, not 'lots'"),
    (CloudhopReaper, "interval", 0, r"^c\.CloudhopReaper\.interval must be a number of seconds > 0, not 0"),
    (CloudhopReaper, "interval", "soon", r"^c\.CloudhopReaper\.interval must be a number of seconds > 0, not 'soon'"),
    (CloudhopReaper, "grace", -5, r"^c\.CloudhopReaper\.grace must be a number of seconds >= 0, not -5"),
    (CloudhopReaper, "grace", float("nan"), r"^c\.CloudhopReaper\.grace must be a number of seconds >= 0, not nan"),
])
def test_a_bad_value_is_refused_by_name(cls, name, value, message):
    with pytest.raises(TraitError, match=message):
        cls(config=Config({cls.__name__: {name: value}}))


def load_embedded(tmp_path, monkeypatch, extra: str) -> Config:
    """`cloudhop up`'s hub config, with ``extra`` as the operator's --config file."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "extra.py").write_text(extra)
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(data))
    monkeypatch.setenv("CLOUDHOP_EXTRA_CONFIG", str(tmp_path / "extra.py"))
    monkeypatch.delenv("CLOUDHOP_CULL_IDLE", raising=False)
    loader = PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent))
    return loader.load_config()


def services(c: Config) -> dict:
    return {s["name"]: s for s in c.JupyterHub.services}


def test_the_hub_config_reads_both_sections(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, "c.CloudhopStore.port = 10111\n"
                      "c.CloudhopStore.s3 = {'bucket': 'snaps'}\nc.CloudhopReaper.grace = 60\n"
                      "c.CloudhopStore.quota_gib = 2.5\n")
    store = services(c)["cloudhop-store"]
    assert store["url"] == "http://127.0.0.1:10111"
    assert store["environment"]["CLOUDHOP_STORE_QUOTA_GIB"] == "2.5"
    assert store["environment"]["CLOUDHOP_STORE_S3_BUCKET"] == "snaps"
    reaper = json.loads(services(c)["cloudhop-reaper"]["environment"]["CLOUDHOP_REAPER_SETTINGS"])
    assert (reaper["interval"], reaper["grace"]) == (300, 60)


def test_the_hub_config_picks_and_keeps_a_store_port(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, "c.CloudhopReaper.enabled = False\n")
    port = int(services(c)["cloudhop-store"]["url"].rsplit(":", 1)[1])
    assert 1 <= port <= 65535 and (tmp_path / "data" / "store_port").exists()
    assert services(c)["cloudhop-store"]["environment"]["CLOUDHOP_STORE_BACKEND"] == "local"
    assert "cloudhop-reaper" not in services(c)


@pytest.mark.parametrize("extra, message", [
    ("c.CloudhopStore.port = 99999\n", r"c\.CloudhopStore\.port must be"),
    ("c.CloudhopStore.s3 = {'bukket': 'snaps'}\n", r"c\.CloudhopStore\.s3 has no key 'bukket'"),
    ("c.CloudhopReaper.interval = -1\n", r"c\.CloudhopReaper\.interval must be"),
])
def test_the_hub_config_refuses_a_bad_value_by_name(tmp_path, monkeypatch, extra, message):
    with pytest.raises(TraitError, match=message):
        load_embedded(tmp_path, monkeypatch, extra)

"""The shipped catalog as users and operators meet it: offers, N1 GPUs, overrides, checks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner.catalog import (
    Catalog,
    CatalogError,
    catalog_offers,
    check_path,
    record_check,
    split_attached,
)
from cloudhop.spawner.catalog.loader import DATA_DIR
from cloudhop.spawner.offers import matching


def rows(name):
    with open(DATA_DIR / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def cfg(tmp_path, **catalog):
    c = Config()
    c.Catalog.check_dir = str(tmp_path)  # never read a check result left elsewhere
    for k, v in catalog.items():
        setattr(c.Catalog, k, v)
    return c


@pytest.mark.parametrize("provider", ["aws", "gcp", "oci"])
def test_every_gpu_row_becomes_an_offer_with_the_csv_price(provider, tmp_path):
    offers = {(o.instance_type, o.region): o for o in catalog_offers(provider, cfg(tmp_path))}
    nvidia = [r for r in rows(provider) if r["accelerator"] not in (
        "Inferentia", "Inferentia2", "Trainium", "Trainium2", "Gaudi HL-205", "Qualcomm AI100",
        "Radeon Pro V520", "Virtex UltraScale (VU9P)", "Virtex UltraScale+ (VU47P)")]
    assert nvidia
    for r in nvidia:
        o = offers[(r["instance_type"], r["region"])]
        assert o.gpu == r["accelerator"]
        assert o.gpu_count == int(r["accelerator_count"])
        assert o.price_hour == pytest.approx(float(r["price_hour"]))
        if r["spot_price_hour"]:
            assert o.spot_price_hour == pytest.approx(float(r["spot_price_hour"]))
        else:
            assert o.spot_price_hour is None
        assert o.zones == tuple(r["zones"].split(";"))
        assert not o.price_partial


def test_p5_has_eight_h100_with_memory_and_cpus(tmp_path):
    p5 = [o for o in catalog_offers("aws", cfg(tmp_path)) if o.instance_type == "p5.48xlarge"]
    assert p5 and all(o.gpu == "H100" and o.gpu_count == 8 for o in p5)
    assert p5[0].gpu_memory_gib == 80.0 and p5[0].vcpus == 192 and p5[0].memory_gib == 2048.0
    assert isinstance(p5[0].zones, tuple)


def test_non_nvidia_accelerators_are_dropped_unless_kept(tmp_path):
    names = {o.gpu for o in catalog_offers("aws", cfg(tmp_path))}
    assert "Inferentia2" not in names and "Trainium" not in names and "H100" in names
    kept = catalog_offers("aws", cfg(tmp_path, keep_non_nvidia=True))
    inf = [o for o in kept if o.gpu == "Inferentia2"]
    assert inf and all(o.note == "not an NVIDIA GPU" for o in inf)


def test_gpu_names_match_case_insensitively(tmp_path):
    offers = catalog_offers("gcp", cfg(tmp_path))
    assert matching(offers, gpu="a100-80gb") == matching(offers, gpu="A100-80GB") != []


def test_gcp_n1_gpus_are_host_plus_accelerator_with_a_partial_price(tmp_path):
    n1 = {(o.instance_type, o.region): o for o in catalog_offers("gcp", cfg(tmp_path)) if "+" in o.instance_type}
    src = [r for r in rows("gcp_n1_accelerators")]
    assert len(n1) == len(src)
    t4 = n1[("n1-standard-8+T4x1", "us-central1")]
    row = next(r for r in src if r["accelerator"] == "T4" and r["accelerator_count"] == "1" and r["region"] == "us-central1")
    assert t4.price_hour == pytest.approx(float(row["accelerator_price_hour"]))
    assert t4.price_partial and "n1-standard-8 host is extra" in t4.note
    assert (t4.gpu, t4.gpu_count, t4.vcpus, t4.memory_gib) == ("T4", 1, 8, 30.0)
    assert split_attached(t4.instance_type) == ("n1-standard-8", "T4", 1)
    assert split_attached("a2-highgpu-1g") is None


def test_operator_host_prices_complete_n1_offers(tmp_path):
    c = cfg(tmp_path, n1_host_prices={
        "n1-standard-8": 0.38,
        "us-central1/n1-standard-8": {"price_hour": 0.40, "spot_price_hour": 0.08},
    })
    offers = {(o.instance_type, o.region): o for o in catalog_offers("gcp", c)}
    row = next(r for r in rows("gcp_n1_accelerators") if r["accelerator"] == "T4" and r["accelerator_count"] == "1" and r["region"] == "us-central1")
    t4 = offers[("n1-standard-8+T4x1", "us-central1")]
    assert t4.price_hour == pytest.approx(float(row["accelerator_price_hour"]) + 0.40)
    assert t4.spot_price_hour == pytest.approx(float(row["accelerator_spot_price_hour"]) + 0.08)
    assert not t4.price_partial and t4.note == ""
    # on-demand host price only: the spot price is still the GPUs' alone, said so
    other = offers[("n1-standard-8+T4x1", "europe-west4")]
    assert other.price_partial and "spot price is the GPUs only" in other.note


def test_bad_operator_host_settings_name_the_key():
    with pytest.raises(TraitError, match=r"n1_hosts.*'x'"):
        Catalog(n1_hosts={"x": "n1-standard-8"})
    with pytest.raises(TraitError, match=r"n1_hosts.*N1 machine type"):
        Catalog(n1_hosts={1: "a2-highgpu-1g"})
    with pytest.raises(TraitError, match=r"n1_host_prices\['n1-standard-8'\].*price_hour must be a number"):
        Catalog(n1_host_prices={"n1-standard-8": "cheap"})
    with pytest.raises(TraitError, match=r"unknown key 'cost'"):
        Catalog(n1_host_prices={"n1-standard-8": {"cost": 1}})


HEADER = "cloud,instance_type,accelerator,accelerator_count,accelerator_memory_gib,vcpus,memory_gib,price_hour,spot_price_hour,region,zones\n"


def test_override_file_replaces_and_adds_rows(tmp_path):
    path = tmp_path / "ours.csv"
    path.write_text(
        HEADER
        + "aws,p5.48xlarge,H100,8,80.0,192,2048.0,20.5,9.5,us-east-1,use1-az4\n"
        + "aws,g6.xlarge,L4,1,22.4,4,16.0,0.5,,mars-north-1,mn1-az1\n"
        + "gcp,ignored-here,L4,1,22.4,4,16.0,0.5,,x,\n"
    )
    offers = {(o.instance_type, o.region): o for o in catalog_offers("aws", cfg(tmp_path, override_paths=[str(path)]))}
    assert offers[("p5.48xlarge", "us-east-1")].price_hour == 20.5
    assert offers[("p5.48xlarge", "us-east-1")].zones == ("use1-az4",)
    assert offers[("g6.xlarge", "mars-north-1")].spot_price_hour is None
    assert not any(k[0] == "ignored-here" for k in offers)


def test_override_file_for_n1_gpus(tmp_path):
    path = tmp_path / "n1.csv"
    path.write_text(
        "cloud,accelerator,accelerator_count,accelerator_memory_gib,accelerator_price_hour,accelerator_spot_price_hour,region,zones\n"
        "gcp,T4,8,16.0,2.8,0.9,us-central1,us-central1-a\n"
    )
    offers = {(o.instance_type, o.region): o for o in catalog_offers("gcp", cfg(tmp_path, override_paths=[str(path)]))}
    assert offers[("n1-standard-64+T4x8", "us-central1")].price_hour == 2.8


@pytest.mark.parametrize("line,field", [
    ("aws,p9,H100,8,80,192,2048,lots,,us-east-1,", "price_hour"),
    ("aws,p9,H100,eight,80,192,2048,1,,us-east-1,", "accelerator_count"),
    ("aws,,H100,8,80,192,2048,1,,us-east-1,", "instance_type"),
    ("aws,p9,H100,8,80,192,2048,-1,,us-east-1,", "price_hour"),
    ("aws,p9,H100,8,80,192,2048,,,us-east-1,", "price_hour"),
])
def test_bad_override_rows_name_file_line_and_column(tmp_path, line, field):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + line + "\n")
    with pytest.raises(CatalogError) as err:
        catalog_offers("aws", cfg(tmp_path, override_paths=[str(path)]))
    assert err.value.field == field
    assert "bad.csv:2" in str(err.value)


def test_override_file_missing_or_without_columns(tmp_path):
    with pytest.raises(CatalogError, match="file not found"):
        catalog_offers("aws", cfg(tmp_path, override_paths=[str(tmp_path / "nope.csv")]))
    path = tmp_path / "short.csv"
    path.write_text("cloud,instance_type\naws,x\n")
    with pytest.raises(CatalogError, match="accelerator: column missing"):
        catalog_offers("aws", cfg(tmp_path, override_paths=[str(path)]))


def test_recorded_check_drops_what_the_account_cannot_launch(tmp_path):
    record_check(
        check_path(tmp_path, "aws"), "aws", ["us-east-1"],
        [("p5.48xlarge", "us-east-1", ["use1-az6"]), ("g6.xlarge", "us-east-1", [])],
    )
    offers = catalog_offers("aws", cfg(tmp_path))
    east = {o.instance_type: o for o in offers if o.region == "us-east-1"}
    assert set(east) == {"p5.48xlarge", "g6.xlarge"}
    assert east["p5.48xlarge"].zones == ("use1-az6",)
    # regions that were not asked keep the catalog's rows
    assert any(o.region == "us-west-2" and o.instance_type == "p5.48xlarge" for o in offers)
    # and the check can be switched off
    assert len(catalog_offers("aws", cfg(tmp_path, use_check=False))) > len(offers)


def test_checking_another_region_keeps_the_earlier_result(tmp_path):
    path = check_path(tmp_path, "oci")
    record_check(path, "oci", ["us-ashburn-1"], [("VM.GPU.A10.1", "us-ashburn-1", ["AD-1"])])
    record_check(path, "oci", ["eu-frankfurt-1"], [{"instance_type": "VM.GPU.A10.2", "region": "eu-frankfurt-1"}])
    offers = catalog_offers("oci", cfg(tmp_path))
    assert {o.instance_type for o in offers if o.region == "us-ashburn-1"} == {"VM.GPU.A10.1"}
    assert {o.instance_type for o in offers if o.region == "eu-frankfurt-1"} == {"VM.GPU.A10.2"}


def test_unknown_and_live_providers():
    assert catalog_offers("local") == [] and catalog_offers("kubernetes") == []
    with pytest.raises(ValueError, match="unknown catalog provider 'paperspace'"):
        catalog_offers("paperspace")


def test_catalog_ships_as_package_data():
    names = {p.name for p in Path(DATA_DIR).iterdir()}
    assert {"aws.csv", "gcp.csv", "gcp_n1_accelerators.csv", "oci.csv", "README.md"} <= names

"""``cloudhop offers`` and ``cloudhop catalog check`` as a user and an operator run them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudhop.hub.cli import main
from cloudhop.spawner.catalog.loader import DATA_DIR

TESTS = Path(__file__).parent


def csv_prices(*names):
    out = {}
    for name in names:
        with open(DATA_DIR / f"{name}.csv", newline="") as f:
            for r in csv.DictReader(f):
                out[(r["cloud"], r["region"], r["instance_type"])] = (
                    float(r["price_hour"]), float(r["spot_price_hour"]) if r["spot_price_hour"] else None)
    return out


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """No check result of another run may leak in; local workspaces stay in tmp."""
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_h100x8_json_lists_clouds_cheapest_first_at_catalog_prices(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "H100", "--count", "8", "--json")
    assert code == 0
    offers = json.loads(out)
    # the data has no OCI H100 shape
    assert {o["provider"] for o in offers} == {"aws", "gcp", "lambda", "azure", "digitalocean"}
    prices = [o["price_hour"] for o in offers]
    assert prices == sorted(prices)
    truth = csv_prices("aws", "gcp", "oci", "lambda", "azure", "digitalocean")
    for o in offers:
        for field in ("provider", "region", "instance_type", "gpu", "gpu_count", "gpu_memory_gib",
                      "vcpus", "memory_gib", "price_hour", "spot_price_hour"):
            assert field in o
        assert (o["gpu"], o["gpu_count"]) == ("H100", 8)
        assert (o["price_hour"], o["spot_price_hour"]) == truth[(o["provider"], o["region"], o["instance_type"])]


def test_a100x8_spans_aws_gcp_and_oci(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "a100", "--count", "8", "--json")
    offers = json.loads(out)
    assert code == 0 and {o["provider"] for o in offers} == {"aws", "gcp", "oci", "lambda", "azure"}
    assert offers[0]["price_hour"] == min(o["price_hour"] for o in offers)


def test_spot_sorts_by_spot_price_and_drops_offers_without_one(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "L4", "--spot", "--max-price", "0.3", "--json")
    offers = json.loads(out)
    assert code == 0 and offers
    spots = [o["spot_price_hour"] for o in offers]
    assert None not in spots and spots == sorted(spots) and max(spots) <= 0.3


def test_provider_region_and_max_price_filter(capsys):
    code, out, _ = run(capsys, "offers", "--provider", "gcp", "--region", "us-central1", "--max-price", "1", "--json")
    offers = json.loads(out)
    assert code == 0 and offers
    assert all(o["provider"] == "gcp" and o["region"] == "us-central1" and o["price_hour"] <= 1 for o in offers)
    # N1 GPUs come with their host named and the price marked partial
    t4 = next(o for o in offers if o["instance_type"] == "n1-standard-8+T4x1")
    assert t4["price_partial"] is True and "host is extra" in t4["note"]


def test_table_is_readable_and_marks_partial_prices(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "T4", "--count", "1", "--region", "us-central1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["PROVIDER", "REGION", "INSTANCE"]
    row = next(line for line in lines[1:] if "n1-standard-8+T4x1" in line)
    assert "0.3500+" in row and "host is extra" in row  # the CSV's T4 price, marked partial
    assert "partial price" in out and "sorted by on-demand price" in out


def test_local_offers_are_listed(capsys):
    code, out, _ = run(capsys, "offers", "--gpu", "none", "--json")
    offers = json.loads(out)
    assert code == 0 and any(o["provider"] == "local" for o in offers)


def test_config_sets_providers_and_overrides(tmp_path, capsys, oci_config):
    extra = tmp_path / "ours.csv"
    extra.write_text(
        "cloud,instance_type,accelerator,accelerator_count,accelerator_memory_gib,vcpus,memory_gib,price_hour,spot_price_hour,region,zones\n"
        "oci,BM.GPU.H100.8,H100,8,80.0,112,2048,80.0,,us-ashburn-1,AD-1\n"
    )
    cfg = tmp_path / "hub_config.py"
    cfg.write_text(f"c.CloudhopSpawner.providers = ['oci']\nc.Catalog.override_paths = [{str(extra)!r}]\n"
                   f"c.OCIProvider.config_file = {str(oci_config / 'config')!r}\n"
                   "c.OCIProvider.subnet_id = 'ocid1.subnet.oc1..test'\n")
    code, out, _ = run(capsys, "offers", "--gpu", "H100", "--config", str(cfg), "--json")
    assert code == 0 and [(o["provider"], o["price_hour"]) for o in json.loads(out)] == [("oci", 80.0)]


@pytest.mark.parametrize("argv,says", [
    (["--gpu", "H1OO"], "--gpu: unknown value 'H1OO'; did you mean 'H100'?"),
    (["--count", "eight"], "--count: must be a whole number from 0 to 16, not 'eight'"),
    (["--count", "-1"], "--count: must be from 0 to 16, not -1"),
    (["--count", "99"], "--count: must be from 0 to 16, not 99"),
    (["--provider", "gpc"], "--provider: unknown value 'gpc'; did you mean 'gcp'?"),
    (["--provider", "paperspace"], "--provider: unknown value 'paperspace'"),
    (["--region", "asia-southeast-1"], "--region: unknown value 'asia-southeast-1'; did you mean 'asia-southeast1'?"),
    (["--max-price", "cheap"], "--max-price: must be a number of USD per hour, not 'cheap'"),
    (["--max-price", "-2"], "--max-price: must be a number of USD per hour >= 0"),
    (["--max-price", "nan"], "--max-price: must be a number of USD per hour >= 0"),
    (["--config", "/nonexistent/hub.py"], "--config: '/nonexistent/hub.py' is not a file"),
])
def test_bad_flags_exit_2_naming_the_flag(capsys, argv, says):
    code, out, err = run(capsys, "offers", *argv)
    assert code == 2 and out == ""
    assert says in err


def test_bad_override_file_exits_2_naming_the_column(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("cloud,instance_type\naws,x\n")
    cfg = tmp_path / "hub_config.py"
    cfg.write_text(f"c.Catalog.override_paths = [{str(bad)!r}]\n")
    code, _, err = run(capsys, "offers", "--config", str(cfg))
    assert code == 2 and "bad.csv: accelerator: column missing" in err


# -- cloudhop catalog check ---------------------------------------------------------


def test_catalog_check_records_and_the_loader_drops_the_rest(tmp_path, capsys):
    data = tmp_path / "data"
    code, out, err = run(capsys, "catalog", "check", "--provider", "catalog_double:ScriptedAWS", "--data-dir", str(data))
    assert code == 0, err
    assert "can be launched with these credentials" in out
    record = json.loads((data / "catalog-check-aws.json").read_text())
    assert record["provider"] == "aws" and "us-east-1" in record["regions"]
    assert not any(o["instance_type"] == "made-up.large" for o in record["offers"])

    code, out, _ = run(capsys, "offers", "--provider", "aws", "--json")
    offers = json.loads(out)
    assert offers and {o["instance_type"].split(".")[0] for o in offers} == {"g6", "p5"}
    p5 = [o for o in offers if o["instance_type"] == "p5.48xlarge"]
    assert [(o["region"], o["zones"]) for o in p5] == [("us-east-1", ["use1-az6"])]


def test_catalog_check_of_one_region_keeps_the_others(tmp_path, capsys):
    data = tmp_path / "data"
    from catalog_double import ScriptedAWS

    code, _, err = run(capsys, "catalog", "check", "--provider", "catalog_double:ScriptedAWS",
                       "--region", "eu-west-1", "--data-dir", str(data))
    assert code == 0, err
    assert {o.region for o in ScriptedAWS.asked} == {"eu-west-1"}
    code, out, _ = run(capsys, "offers", "--provider", "aws", "--json")
    offers = json.loads(out)
    assert {o["instance_type"].split(".")[0] for o in offers if o["region"] == "eu-west-1"} <= {"g6"}
    assert any(o["instance_type"] == "p5.48xlarge" and o["region"] == "us-west-2" for o in offers)


@pytest.mark.parametrize("argv,code,says", [
    (["--provider", "awss"], 2, "--provider: unknown value 'awss'; did you mean 'aws'?"),
    (["--provider", "catalog_double:Nope"], 2, "--provider: cannot load 'catalog_double:Nope'"),
    (["--provider", "catalog_double:ScriptedUncatalogued"], 2, "which has no catalog rows"),
    (["--provider", "aws", "--region", "mars-1"], 2, "--region: unknown value 'mars-1'"),
    (["--provider", "catalog_double:NoCredentialsAWS"], 1, "aws: credentials: no AWS credentials found"),
])
def test_catalog_check_errors(tmp_path, capsys, argv, code, says):
    got, _, err = run(capsys, "catalog", "check", *argv, "--data-dir", str(tmp_path / "data"))
    assert got == code and says in err
    assert not (tmp_path / "data" / "catalog-check-aws.json").exists()


def test_the_installed_command_runs(tmp_path):
    env = {**os.environ, "CLOUDHOP_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "cloudhop.hub.cli", "offers", "--all", "--gpu", "H100", "--count", "8", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["provider"] == "lambda"


def test_local_gpus_are_listed_at_the_operator_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", json.dumps([
        {"name": "NVIDIA A100-SXM4-80GB", "memory_gib": 80, "uuid": "GPU-a"},
        {"name": "NVIDIA A100-SXM4-80GB", "memory_gib": 80, "uuid": "GPU-b"},
    ]))
    cfg = tmp_path / "hub_config.py"
    cfg.write_text(
        "c.CloudhopSpawner.providers = ['local', 'aws']\n"
        "c.LocalProvider.nvml_module = 'fakes.nvml'\n"
        f"c.LocalProvider.default_root = {str(tmp_path / 'ws')!r}\n"
    )
    code, out, err = run(capsys, "offers", "--config", str(cfg), "--count", "2", "--json")
    assert code == 0, err
    offers = json.loads(out)
    local = [o for o in offers if o["provider"] == "local"]
    assert local and local[0]["gpu_count"] == 2 and local[0]["price_hour"] == 0
    assert offers[0]["provider"] == "local"  # free beats every cloud
    gpu = local[0]["gpu"]
    cfg.write_text(cfg.read_text() + f"c.LocalProvider.gpu_price_hour = {{{gpu!r}: 1.25}}\n")
    code, out, _ = run(capsys, "offers", "--config", str(cfg), "--gpu", gpu, "--json")
    assert [(o["gpu_count"], o["price_hour"]) for o in json.loads(out) if o["provider"] == "local"] == [(1, 1.25), (2, 2.5)]


def test_catalog_check_against_the_compute_api_with_the_real_gcp_client(tmp_path, capsys):
    """The GCP provider's own check (machineTypes + acceleratorTypes aggregated lists,
    through google-cloud-compute) against a local Compute API double."""
    from fakes.gcp_compute import FakeCompute

    fake = FakeCompute()
    url = fake.start()
    try:
        fake.machine_types = {"us-central1-a": ["g2-standard-4", "n1-standard-8"], "us-central1-b": ["g2-standard-4"]}
        fake.accelerator_types = {"us-central1-a": ["nvidia-tesla-t4"], "us-central1-b": ["nvidia-tesla-t4"]}
        cfg = tmp_path / "hub_config.py"
        cfg.write_text(
            "c.GCPProvider.project = 'cloudhop-test'\n"
            f"c.GCPProvider.api_endpoint = {url!r}\n"
            "c.GCPProvider.anonymous_credentials = True\n"
        )
        code, out, err = run(capsys, "catalog", "check", "--provider", "gcp", "--config", str(cfg),
                             "--data-dir", str(tmp_path / "data"))
        assert code == 0, err
        assert "gcp: 2 of " in out
    finally:
        fake.stop()
    code, out, _ = run(capsys, "offers", "--provider", "gcp", "--json")
    offers = {(o["instance_type"], o["region"]): o["zones"] for o in json.loads(out)}
    assert offers == {
        ("g2-standard-4", "us-central1"): ["us-central1-a", "us-central1-b"],
        ("n1-standard-8+T4x1", "us-central1"): ["us-central1-a"],
    }


# -- what this hub can launch, grouped rows, plain help, near misses -----------------------


@pytest.fixture
def no_aws_credentials(tmp_path, monkeypatch):
    """No AWS credentials anywhere boto3 looks (environment, files, instance metadata)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_only_the_providers_this_hub_can_launch_unless_all(capsys):
    # a plain `cloudhop up` enables the local provider only
    code, out, err = run(capsys, "offers", "--json")
    assert code == 0 and {o["provider"] for o in json.loads(out)} == {"local"}
    assert "Not shown, as this hub cannot launch them: aws, gcp, oci, lambda, azure, digitalocean, yandex (not enabled on this hub" in err
    code, out, _ = run(capsys, "offers")
    table_lines = out.splitlines()
    assert all(line.split()[0] in ("PROVIDER", "local") for line in table_lines[1:-2])
    assert table_lines[-1].startswith("Not shown, as this hub cannot launch them: aws, gcp, oci, lambda, azure, digitalocean, yandex")
    assert "--all lists them too" in table_lines[-1]
    code, out, err = run(capsys, "offers", "--all", "--json")
    assert {o["provider"] for o in json.loads(out)} == {"local", "aws", "gcp", "oci", "lambda", "azure", "digitalocean",
                                                  "yandex"} and "Not shown" not in err


def test_an_enabled_provider_the_hub_cannot_use_is_left_out_with_its_reason(tmp_path, capsys, monkeypatch,
                                                                            no_aws_credentials):
    cfg = tmp_path / "hub_config.py"
    cfg.write_text("c.CloudhopSpawner.providers = ['local', 'aws']\n")
    code, out, err = run(capsys, "offers", "--config", str(cfg), "--json")
    assert code == 0 and {o["provider"] for o in json.loads(out)} == {"local"}
    assert "aws (no AWS credentials found" in err and "gcp, oci, lambda, azure, digitalocean, yandex (not enabled on this hub" in err
    # with credentials (as the spawn form asks: found, not tried) the hub can launch on AWS
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    code, out, err = run(capsys, "offers", "--config", str(cfg), "--json")
    assert {o["provider"] for o in json.loads(out)} == {"local", "aws"} and "aws (" not in err
    assert "not-a-real-secret" not in out + err


def test_provider_flag_lists_a_provider_the_hub_cannot_launch_and_says_so(capsys):
    code, out, _ = run(capsys, "offers", "--provider", "gcp", "--gpu", "L4", "--count", "1")
    assert code == 0 and "g2-standard-4" in out
    assert "gcp is listed because --provider names it, but this hub cannot launch it: not enabled" in out


def test_identical_offers_in_several_regions_share_a_row(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--provider", "oci", "--gpu", "A100", "--count", "8", "--json")
    offers = json.loads(out)
    groups: dict = {}
    for o in offers:
        groups.setdefault((o["instance_type"], o["price_hour"], o["spot_price_hour"]), []).append(o["region"])
    assert any(len(regions) > 3 for regions in groups.values()), "the data has OCI shapes in many regions"
    code, out, _ = run(capsys, "offers", "--all", "--provider", "oci", "--gpu", "A100", "--count", "8")
    rows = [line for line in out.splitlines()[1:] if line.startswith("oci  ")]
    assert len(rows) == len(groups)
    for (shape, _, _), regions in groups.items():
        (row,) = [r for r in rows if f"  {shape}  " in r]
        assert ", ".join(regions[:3]) in row
        assert (f"+{len(regions) - 3} more" in row) == (len(regions) > 3)
    assert f"{len(offers)} offer(s) in {len(groups)} row(s)" in out


def test_help_is_plain_text():
    import argparse
    import re

    from cloudhop.hub.cli import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(build_parser()):
        text = parser.format_help()
        assert "`" not in text and not re.search(r":(mod|class|func|meth|data|attr):", text), (parser.prog, text)


def test_no_match_names_the_nearest_counts_and_models(capsys):
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "H100", "--json")
    counts = sorted({o["gpu_count"] for o in json.loads(out)})
    assert 3 not in counts and len(counts) > 1
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "H100", "--count", "3")
    assert code == 0
    assert out.startswith(f"No offer matches H100 x 3. Nearest: H100 x {', '.join(map(str, counts))}")
    # the models with the asked count
    code, out, _ = run(capsys, "offers", "--all", "--count", "16", "--json")
    sixteen = {o["gpu"] for o in json.loads(out)}
    assert sixteen and "H100" not in sixteen
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "H100", "--count", "16")
    assert out.startswith("No offer matches H100 x 16. Nearest: H100 x ")
    assert all(f"{gpu} x 16" in out for gpu in sixteen)
    # only a flag stands in the way: the cheapest that the other flags would give
    code, out, _ = run(capsys, "offers", "--all", "--gpu", "L4", "--max-price", "0.01")
    assert "No offer matches L4 at most 0.01 $/h. Without --region, --spot and --max-price: L4 x " in out


def test_no_match_on_this_hub_says_which_providers_have_it(capsys):
    code, out, _ = run(capsys, "offers", "--gpu", "H100", "--count", "8")
    first = out.splitlines()[0]
    assert first.startswith("No offer matches H100 x 8.")
    assert "aws" in first and "gcp" in first and "this hub cannot launch them (--all lists them)" in first
    code, out, _ = run(capsys, "offers", "--gpu", "H100", "--count", "3")
    assert "Nearest on " in out and "which this hub cannot launch" in out and "H100 x 1, 2, 4, 8" in out

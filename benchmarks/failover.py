"""Failover benchmark: how fast a capacity error moves a launch to the next offer, and
what retrying throttling costs. Every figure is a ratio against a baseline measured in
the same run: a successful launch through the same provider, SDK and test double.

Per cloud (AWS: boto3 on in-process moto; GCP: google-cloud-compute on the local
Compute fake; OCI: oci on the local OCI fake; the same doubles the tests use):

1. ``launch ok``       a successful launch (the baseline);
2. ``capacity``        a launch answered with the cloud's capacity error, until
                       :class:`CapacityError` reaches the caller (what failover waits for,
                       after trying each of the offer's zones on AWS and GCP);
3. ``sdk retry``       the same capacity error through the SDK's ordinary retrying path
                       (botocore standard mode, its default 3 attempts, which backs off
                       from 50 ms on server errors; an OCI retry strategy on any 5xx, 3
                       attempts) - what failover would wait without the no-retry path;
4. ``throttled x2``    two throttling answers, then success, with the provider's default
                       backoff (``retry_base_delay`` = 1 s, doubling, jittered).

    python benchmarks/failover.py            # about a minute on 2 cores
    python benchmarks/failover.py --runs 10

Run from the repository root (it imports the test doubles from ``tests/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloudhop.spawner.providers.base import CapacityError  # noqa: E402
from tests.cloudkit import cheapest, spec_for  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    try:
        asyncio.run(fn())
    except CapacityError:
        pass
    return time.perf_counter() - t


def summary(samples):
    return statistics.median(samples)


# -- AWS ---------------------------------------------------------------------------
def aws(runs: int) -> dict:
    import boto3
    import botocore.config
    from botocore.awsrequest import AWSResponse
    from moto import mock_aws

    from cloudhop.spawner.providers.aws import AWSProvider

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    offer = cheapest("aws", "us-east-1", "T4", 1)
    image = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"

    class Raw:
        def __init__(self, body):
            self.body = body

        def stream(self, **_):
            yield self.body

    def answer_call(codes):
        queue = list(codes)

        def before_call(**_):
            if not queue:
                return None
            code, status = queue.pop(0)
            return AWSResponse("https://ec2.invalid/", status, {}, Raw(b"")), {
                "Error": {"Code": code, "Message": "bench"}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return before_call

    out = {"launch ok": [], "capacity": [], "sdk retry": [], "throttled x2": []}
    attempts = []
    with mock_aws():
        for _ in range(runs):
            p = AWSProvider(image_ssm_parameter=image, regions=["us-east-1"])
            p._image("us-east-1")  # the SSM and zone lookups once, outside the timings
            p._zone_names("us-east-1")
            out["launch ok"].append(timed(lambda: p.launch(spec_for(offer))))

            p.client("us-east-1", retries=False).meta.events.register_first(
                "before-call.ec2.RunInstances",
                answer_call([("InsufficientInstanceCapacity", 500)] * len(offer.zones)))  # every zone
            out["capacity"].append(timed(lambda: p.launch(spec_for(offer))))

            p = AWSProvider(image_ssm_parameter=image, regions=["us-east-1"])
            p._image("us-east-1")
            p.client("us-east-1", retries=False).meta.events.register_first(
                "before-call.ec2.RunInstances", answer_call([("RequestLimitExceeded", 503)] * 2))
            out["throttled x2"].append(timed(lambda: p.launch(spec_for(offer))))

    # a plain local endpoint that answers every RunInstances with
    # InsufficientInstanceCapacity: the SDK's own retry timing, with nothing mocked
    url, stop = _capacity_endpoint()
    try:
        for _ in range(runs):
            naive = boto3.client("ec2", region_name="us-east-1", endpoint_url=url, config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": 3}))
            t = time.perf_counter()
            try:
                naive.run_instances(ImageId="ami-12345678", InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1)
            except naive.exceptions.ClientError as err:
                attempts.append(err.response["ResponseMetadata"].get("RetryAttempts", 0) + 1)
            out["sdk retry"].append(time.perf_counter() - t)
    finally:
        stop()
    assert set(attempts) == {3}, attempts
    return out


def _capacity_endpoint():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = (b"<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code><Message>bench</Message>"
            b"</Error></Errors><RequestID>r</RequestID></Response>")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop():
        server.shutdown()
        server.server_close()
    return f"http://127.0.0.1:{server.server_address[1]}", stop


# -- GCP ---------------------------------------------------------------------------
def gcp(runs: int) -> dict:
    from cloudhop.spawner.providers.gcp import GCPProvider
    from tests.fakes.gcp_compute import FakeCompute

    offer = cheapest("gcp", "us-central1", "L4", 1)
    out = {"launch ok": [], "capacity": [], "throttled x2": []}
    fake = FakeCompute()
    url = fake.start()
    try:
        for _ in range(runs):
            p = GCPProvider(api_endpoint=url, anonymous_credentials=True, project="bench")
            out["launch ok"].append(timed(lambda: p.launch(spec_for(offer))))
            fake.script("insert", *["capacity"] * len(offer.zones))  # every zone of the offer
            out["capacity"].append(timed(lambda: p.launch(spec_for(offer))))
            fake.script("insert", 503, 429)
            out["throttled x2"].append(timed(lambda: p.launch(spec_for(offer))))
    finally:
        fake.stop()
    return out


# -- OCI ---------------------------------------------------------------------------
def oci_bench(runs: int) -> dict:
    import oci
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cloudhop.spawner.providers.oci import OCIProvider
    from tests.fakes.oci_api import FakeOCI

    d = Path(tempfile.mkdtemp(prefix="cloudhop-bench-oci-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "config").write_text(
        "[DEFAULT]\nuser=ocid1.user.oc1..bench\nfingerprint=11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff\n"
        f"tenancy=ocid1.tenancy.oc1..bench\nregion=eu-amsterdam-1\nkey_file={d / 'key.pem'}\n")
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    out = {"launch ok": [], "capacity": [], "sdk retry": [], "throttled x2": []}
    fake = FakeOCI()
    url = fake.start()
    try:
        for _ in range(runs):
            p = OCIProvider(config_file=str(d / "config"), service_endpoint=url, subnet_id="ocid1.subnet.oc1..bench")
            p.availability_domains("eu-amsterdam-1")
            p._image("eu-amsterdam-1", offer.instance_type)  # lookups once, outside the timings
            out["launch ok"].append(timed(lambda: p.launch(spec_for(offer))))
            fake.script("launch", "capacity")
            out["capacity"].append(timed(lambda: p.launch(spec_for(offer))))
            fake.script("launch", 429, 503)
            out["throttled x2"].append(timed(lambda: p.launch(spec_for(offer))))

            fake.script("launch", "capacity", "capacity", "capacity")
            strategy = oci.retry.RetryStrategyBuilder(
                max_attempts_check=True, max_attempts=3, service_error_check=True,
                service_error_retry_on_any_5xx=True).get_retry_strategy()
            details = p.launch_details(spec_for(offer), {}, "", p.availability_domains("eu-amsterdam-1")[0],
                                       p._image("eu-amsterdam-1", offer.instance_type))
            t = time.perf_counter()
            try:
                p.client("eu-amsterdam-1").launch_instance(details, retry_strategy=strategy)
            except oci.exceptions.ServiceError:
                pass
            out["sdk retry"].append(time.perf_counter() - t)
    finally:
        fake.stop()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure (median reported)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    import logging

    logging.disable(logging.WARNING)  # the retry warnings are expected here
    print(f"failover benchmark, median of {args.runs} runs (seconds; ratio to 'launch ok' of the same cloud)")
    print(f"{'cloud':6} {'figure':14} {'seconds':>9} {'x launch ok':>12}")
    for cloud, fn in (("aws", aws), ("gcp", gcp), ("oci", oci_bench)):
        figures = fn(args.runs)
        base = summary(figures["launch ok"])
        for name, samples in figures.items():
            med = summary(samples)
            print(f"{cloud:6} {name:14} {med:9.3f} {med / base:12.2f}")
        if "sdk retry" in figures:
            print(f"{cloud:6} {'sdk retry / capacity':22} {summary(figures['sdk retry']) / summary(figures['capacity']):12.1f}x slower without the no-retry path")
    return 0


if __name__ == "__main__":
    sys.exit(main())

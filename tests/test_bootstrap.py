"""Node bootstrap: the cloud-init user-data every VM boots with."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess

import pytest
import yaml

from cloudhop.spawner.bootstrap import container_command, render_user_data
from cloudhop.spawner.offers import Offer
from tests.cloudkit import cheapest, spec_for

IMAGE = "registry.invalid/cloudhop/singleuser:test"


def parsed(text):
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    return doc, files


def env_of(files):
    return dict(line.split("=", 1) for line in files["/etc/cloudhop/env"]["content"].splitlines())


def test_user_data_runs_the_server_with_gpus_env_and_port():
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1), user="alice", port=8890)
    doc, files = parsed(render_user_data(spec, image=IMAGE, hub_connect_url="https://hub.example.org"))
    assert files["/etc/cloudhop/env"]["permissions"] == "0600"
    env = env_of(files)
    assert env["JUPYTERHUB_API_TOKEN"] == "server-own-token-123"
    assert env["JUPYTERHUB_API_URL"] == "https://hub.example.org/hub/api"
    assert env["JUPYTERHUB_ACTIVITY_URL"] == "https://hub.example.org/hub/api/users/alice/activity"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8890/user/alice/"
    script = files["/etc/cloudhop/start.sh"]["content"]
    run = [line for line in script.splitlines() if line.strip().startswith("docker run")][0]
    argv = shlex.split(run)
    assert argv[argv.index("--gpus") + 1] == "all"
    assert argv[argv.index(IMAGE) + 1:] == ["jupyterhub-singleuser", "--debug"]
    assert "--env-file" in argv and "/etc/cloudhop/env" in argv
    assert doc["runcmd"] == [["bash", "/etc/cloudhop/start.sh"]]


def test_start_script_is_valid_bash():
    spec = spec_for(cheapest("gcp", "us-central1", "L4", 1))
    _, files = parsed(render_user_data(spec, image=IMAGE))
    subprocess.run(["bash", "-n"], input=files["/etc/cloudhop/start.sh"]["content"], text=True, check=True)


def test_cpu_offer_gets_no_gpus():
    cpu = Offer("aws", "us-east-1", "m5.large", "none", 0, price_hour=0.096)
    _, files = parsed(render_user_data(spec_for(cpu), image=IMAGE))
    assert "--gpus" not in files["/etc/cloudhop/start.sh"]["content"]


def test_no_credential_reaches_the_user_data(monkeypatch):
    # the hub holds cloud credentials in its environment, and a careless env could carry some
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIAHUBKEY0000000001", "AWS_SECRET_ACCESS_KEY": "hub-secret-aws",
        "AWS_SESSION_TOKEN": "hub-session-token", "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/sa.json",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1))
    leaky = dict(spec.env, **secrets, CLOUDHOP_AWS_SECRET_ACCESS_KEY="prefixed-secret",
                 JUPYTERHUB_CRYPT_KEY_PASSWORD="pw-value", OCI_CLI_KEY_CONTENT="oci-key", PATH="/hub/bin")
    text = render_user_data(dataclasses.replace(spec, env=leaky), image=IMAGE)
    for value in [*secrets.values(), "prefixed-secret", "pw-value", "oci-key", "/hub/bin"]:
        assert value not in text
    assert "server-own-token-123" in text  # the one secret a node needs


def test_arguments_are_quoted_for_the_shell():
    spec = dataclasses.replace(spec_for(cheapest("aws", "us-east-1", "T4", 1)),
                               cmd=["jupyterhub-singleuser", "--notebook-dir=$(touch /tmp/pwned)"])
    _, files = parsed(render_user_data(spec, image=IMAGE))
    run = [line for line in files["/etc/cloudhop/start.sh"]["content"].splitlines() if "docker run" in line][0]
    assert shlex.split(run)[-1] == "--notebook-dir=$(touch /tmp/pwned)"
    assert "'--notebook-dir=$(touch /tmp/pwned)'" in run


def test_ray_worker_container_is_named_by_role():
    spec = dataclasses.replace(spec_for(cheapest("aws", "us-east-1", "T4", 1)), role="ray-worker",
                               cmd=["ray", "start", "--address=10.0.0.1:6379", "--block"])
    argv = container_command(spec, image=IMAGE, gpus=True)
    assert argv[argv.index("--name") + 1] == "cloudhop-ray-worker"
    assert argv[-4:] == ["ray", "start", "--address=10.0.0.1:6379", "--block"]


def test_bad_hub_connect_url_names_the_option():
    import pytest
    import traitlets

    from cloudhop.spawner.providers.gcp import GCPProvider

    with pytest.raises(traitlets.TraitError, match="hub_connect_url"):
        GCPProvider(hub_connect_url="hub.example.org")
    assert GCPProvider(hub_connect_url="https://hub.example.org/").hub_connect_url == "https://hub.example.org"


def test_hub_public_url_is_the_default_connect_url():
    from traitlets.config import Config

    from cloudhop.spawner.providers.gcp import GCPProvider

    c = Config()
    c.JupyterHub.public_url = "https://jupyter.example.edu/"
    spec = spec_for(cheapest("gcp", "us-central1", "L4", 1))
    text = GCPProvider(config=c).user_data(spec)
    assert "JUPYTERHUB_API_URL=https://jupyter.example.edu/hub/api" in text
    c.CloudProvider.hub_connect_url = "http://10.0.0.5:8000"  # the connect URL wins
    assert "JUPYTERHUB_API_URL=http://10.0.0.5:8000/hub/api" in GCPProvider(config=c).user_data(spec)


# -- the start script run for real, against stand-ins for the VM's system commands --

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
"""
STUBS = {
    "systemctl": STUB,
    "curl": STUB + 'echo "deb https://example.invalid/nvidia /"\n',
    "gpg": STUB + "cat >/dev/null\n",
    "tee": STUB + "cat >/dev/null\n",
    # the docker runtime list shows nvidia once nvidia-ctk configured it
    "docker": STUB + '[ "$1" = info ] && { [ -e "$STATE/configured" ] && echo \'{"nvidia":{}}\' || echo \'{"runc":{}}\'; }\nexit 0\n',
    "nvidia-ctk.pkg": STUB + 'touch "$STATE/configured"\n',
    # the package managers "install" the toolkit by putting nvidia-ctk on PATH
    "apt-get": STUB + 'case "$*" in *nvidia-container-toolkit*) cp "$STUBS/nvidia-ctk.pkg" "$STUBS/nvidia-ctk";; esac\n',
    "dnf": STUB + 'case "$*" in *nvidia-container-toolkit*) exit 1;; esac\n',
    "yum": STUB + 'case "$*" in *nvidia-container-toolkit*) exit 1;; esac\n',
}


def run_start_script(tmp_path, *, package_manager, spec=None, stubs_too=None):
    spec = spec or spec_for(cheapest("gcp", "us-central1", "L4", 1))
    _, files = parsed(render_user_data(spec, image=IMAGE))
    script = tmp_path / "start.sh"
    script.write_text(files["/etc/cloudhop/start.sh"]["content"])
    stubs, state = tmp_path / "bin", tmp_path / "state"
    stubs.mkdir()
    state.mkdir(exist_ok=True)
    for tool in ("grep", "sed", "cat", "cp", "touch", "basename", "awk"):
        (stubs / tool).symlink_to(shutil.which(tool))
    for name, body in {**STUBS, **(stubs_too or {})}.items():
        if name in ("apt-get", "dnf", "yum") and name not in package_manager:
            continue
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    env = {"PATH": str(stubs), "CALLS": str(calls), "STATE": str(state), "STUBS": str(stubs)}
    proc = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True)
    return proc, calls.read_text().splitlines()


def test_start_script_installs_the_nvidia_toolkit_a_driver_only_image_lacks(tmp_path):
    proc, calls = run_start_script(tmp_path, package_manager=("apt-get",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    install = calls.index("apt-get install -y -q nvidia-container-toolkit")
    configure = calls.index("nvidia-ctk runtime configure --runtime=docker")
    run = next(i for i, c in enumerate(calls) if c.startswith("docker run "))
    assert install < configure < calls.index("systemctl restart docker") < run
    assert "--gpus all" in calls[run]
    assert "installing the NVIDIA container toolkit" in proc.stdout


def test_start_script_stops_when_the_toolkit_cannot_be_installed(tmp_path):
    proc, calls = run_start_script(tmp_path, package_manager=("dnf", "yum"))
    assert proc.returncode == 1
    assert "could not be installed" in proc.stdout
    assert not any(c.startswith("docker run ") for c in calls), "no server without GPUs exposed"


# -- a Ray node's own firewall: Ray binds its gRPC servers to every interface of a VM --

#: the VM's addresses as ``ip -o -4 addr show scope global`` prints them: a private one,
#: a public one and Docker's bridge
IP_ADDR = """\
2: eth0    inet 10.0.1.5/24 brd 10.0.1.255 scope global dynamic eth0\\       valid_lft 3000sec
3: eth1    inet 203.0.113.7/20 brd 203.0.127.255 scope global eth1\\       valid_lft forever
4: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever
"""
FIREWALL_STUBS = {
    # no rule exists yet: -C (check) fails, so the script inserts it
    "iptables": STUB + '[ "$1" = -C ] && exit 1\nexit 0\n',
    "ip6tables": STUB + '[ "$1" = -C ] && exit 1\nexit 0\n',
    # ``ip route get``: the address outgoing traffic leaves by (the one Ray advertises)
    "ip": STUB.replace('>> "$CALLS"', '>/dev/null') + (
        '[ "$3" = route ] && { echo "1.1.1.1 via 10.0.1.1 dev eth0 src $(cat "$STATE/src" 2>/dev/null '
        '|| echo 10.0.1.5) uid 0"; exit 0; }\n'
        "cat <<'ADDRS'\n" + IP_ADDR + "ADDRS\n"),
}


class Netfilter:
    """Reads back the iptables commands the script ran and says what a TCP packet to
    ``(interface, address, port)`` meets: the first matching rule's verdict, following
    jumps; ``"policy"`` when no rule of INPUT matches (the host's own default)."""

    def __init__(self, calls, tool="iptables"):
        self.chains: dict[str, list[dict]] = {"INPUT": []}
        for call in calls:
            words = shlex.split(call)
            if words[0] != tool:
                continue
            op, chain, rest = words[1], words[2], words[3:]
            if op == "-N" or op == "-F":
                self.chains[chain] = []
            elif op in ("-A", "-I"):
                at = None
                if op == "-I" and rest and rest[0].isdigit():
                    at, rest = int(rest[0]) - 1, rest[1:]
                rule = self.parse(rest)
                rules = self.chains.setdefault(chain, [])
                rules.insert(at, rule) if at is not None else rules.append(rule)

    @staticmethod
    def parse(words):
        rule, negate, i = {}, False, 0
        while i < len(words):
            w = words[i]
            if w == "!":
                negate = True
            elif w in ("-i", "-d", "-p", "-j", "--dport", "--dports", "-m"):
                rule[w] = (words[i + 1], negate)
                negate, i = False, i + 1
            i += 1
        return rule

    def verdict(self, iface, addr, port, chain="INPUT"):
        for rule in self.chains.get(chain, []):
            if self.matches(rule, iface, addr, port):
                target = rule["-j"][0]
                if target in self.chains:
                    got = self.verdict(iface, addr, port, target)
                    if got != "return":
                        return got
                    continue
                return target
        return "policy" if chain == "INPUT" else "return"

    @staticmethod
    def matches(rule, iface, addr, port):
        def test(key, ok):
            if key not in rule:
                return True
            value, negate = rule[key]
            return ok(value) != negate

        def in_ports(spec):
            if ":" in spec:
                low, high = spec.split(":")
                return int(low) <= port <= int(high)
            return str(port) in spec.split(",")

        return (test("-i", lambda v: v == iface) and test("-d", lambda v: v == addr)
                and test("--dport", in_ports) and test("--dports", in_ports))


def ray_node_spec(role="notebook"):
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1), role=role)
    return dataclasses.replace(spec, tags={**spec.tags, "cloudhop-ray-cluster": "spawn1-aws"})


@pytest.mark.parametrize("role", ["notebook", "ray-worker"])
def test_a_ray_nodes_ports_answer_on_its_private_address_and_loopback_only(tmp_path, role):
    """Attack: reach a Ray node's GCS, raylet, worker, dashboard and client ports through
    its public address, a container bridge, IPv6, or (dashboard, client) its private one."""
    proc, calls = run_start_script(tmp_path, package_manager=("apt-get",), spec=ray_node_spec(role),
                                   stubs_too=FIREWALL_STUBS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    firewall = [i for i, c in enumerate(calls) if c.startswith("iptables ")]
    run = next(i for i, c in enumerate(calls) if c.startswith("docker run "))
    assert firewall and max(firewall) < run, "the firewall is up before Ray starts"
    net = Netfilter(calls)
    gcs, raylet, dashboard, client, worker = 6379, 6380, 6382, 6383, 6400
    for port in (gcs, raylet, worker, 6506):  # head<->worker traffic over the private network
        assert net.verdict("eth0", "10.0.1.5", port) == "ACCEPT", port
    for port in (gcs, raylet, dashboard, client, worker):
        assert net.verdict("eth1", "203.0.113.7", port) == "DROP", port  # the public address
        assert net.verdict("docker0", "172.17.0.1", port) == "DROP", port
        assert net.verdict("lo", "127.0.0.1", port) == "ACCEPT", port
    for port in (dashboard, client):  # loopback only: the notebook's proxy and kernels
        assert net.verdict("eth0", "10.0.1.5", port) == "DROP", port
    assert net.verdict("eth1", "203.0.113.7", 8888) == "policy", "the server's port is not Ray's business"
    v6 = Netfilter(calls, tool="ip6tables")
    assert v6.verdict("eth0", "2001:db8::5", gcs) == "DROP" and v6.verdict("lo", "::1", gcs) == "policy"
    assert "Ray's ports answer on 10.0.1.5 (eth0)" in proc.stdout


def test_a_ray_node_without_iptables_does_not_start_ray(tmp_path):
    stubs = {k: v for k, v in FIREWALL_STUBS.items() if k != "iptables"}
    proc, calls = run_start_script(tmp_path, package_manager=("apt-get",), spec=ray_node_spec(), stubs_too=stubs)
    assert proc.returncode == 1
    assert "iptables is missing" in proc.stdout
    assert not any(c.startswith("docker run ") for c in calls)


def test_a_node_without_ray_gets_no_ray_firewall(tmp_path):
    proc, calls = run_start_script(tmp_path, package_manager=("apt-get",), stubs_too=FIREWALL_STUBS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(c.startswith(("iptables", "ip6tables")) for c in calls)


def test_a_node_whose_outgoing_address_is_public_keeps_ray_there_and_nothing_else(tmp_path):
    """A cloud that puts the public address on the interface (DigitalOcean, say): Ray
    advertises it, so Ray's ports answer there too (behind the cloud's cluster rule), but
    the dashboard and client server still only on loopback, and no other address."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "src").write_text("203.0.113.7\n")
    proc, calls = run_start_script(tmp_path, package_manager=("apt-get",), spec=ray_node_spec(),
                                   stubs_too=FIREWALL_STUBS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    net = Netfilter(calls)
    assert net.verdict("eth1", "203.0.113.7", 6379) == "ACCEPT"
    assert net.verdict("eth0", "10.0.1.5", 6379) == "ACCEPT"
    for port in (6382, 6383):
        assert net.verdict("eth1", "203.0.113.7", port) == "DROP"
    assert net.verdict("docker0", "172.17.0.1", 6379) == "DROP"
    assert "203.0.113.7 is not private" in proc.stdout

"""Node bootstrap: the cloud-init user-data every VM boots with."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess

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


def run_start_script(tmp_path, *, package_manager):
    spec = spec_for(cheapest("gcp", "us-central1", "L4", 1))
    _, files = parsed(render_user_data(spec, image=IMAGE))
    script = tmp_path / "start.sh"
    script.write_text(files["/etc/cloudhop/start.sh"]["content"])
    stubs, state = tmp_path / "bin", tmp_path / "state"
    stubs.mkdir()
    state.mkdir()
    for tool in ("grep", "sed", "cat", "cp", "touch", "basename"):
        (stubs / tool).symlink_to(shutil.which(tool))
    for name, body in STUBS.items():
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

"""Workshop mode (``cloudhop up --workshop``): the flag's value, what it sets in the
hub's config, and a hub started with it where a student who logs in is in the students
group and gets a 403 naming the rule for a GPU the workshop does not hand out."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import requests
from traitlets.config import Config

from cloudhop.hub.workshop import Workshop, WorkshopError, apply, parse
from fakes.nvml import fake_env, mig_gpu

TESTS = str(Path(__file__).parent)


def test_the_flag_value():
    assert parse("students=30,gpu=share:4") == Workshop(students=30, gpu="share", share=4)
    assert parse(" students=12 , gpu=mig, cull=45, group=ml-101") == Workshop(
        students=12, gpu="mig", cull_minutes=45, group="ml-101")
    assert parse("students=5") == Workshop(students=5, gpu="none")
    for bad, says in [("gpu=mig", "students=N is needed"), ("students=0", "students must be a whole number"),
                      ("students=3,gpu=share", "gpu must be share:N"), ("students=3,gpu=mig:2", "gpu must be"),
                      ("students=3,gpu=share:1", "gpu=share must be"), ("students=3,seats=4", "'seats=4' is not one of"),
                      ("students=3,students=4", "students is given twice"), ("students=3,group=a/b", "group must be")]:
        with pytest.raises(WorkshopError, match=re.escape(says)):
            parse(bad)


def test_what_it_sets():
    c = Config()
    lines = apply(c, parse("students=30,gpu=share:4"))
    assert c.Policy.groups["students"] == {"max_servers": 1, "max_gpus": 1, "gpus": ["none", "*-shared"],
                                           "providers": ["local"]}
    assert c.LocalProvider.regions == {"workshop": {"gpus": "all", "share_gpus": 4}}
    assert c.Authenticator.manage_groups is True
    assert any("30 seats" in line for line in lines) and any("up to 4" in line for line in lines)
    assert any("30 minutes" in line for line in lines)

    class Auth:
        admin_users = {"teacher"}

    hook = c.Authenticator.post_auth_hook
    assert asyncio.run(hook(Auth(), None, {"name": "ada"}))["groups"] == ["students"]
    assert "groups" not in asyncio.run(hook(Auth(), None, {"name": "teacher"})), "the instructor is not a student"

    c = Config()
    apply(c, parse("students=3"))
    assert c.Policy.groups["students"]["gpus"] == ["none"] and c.LocalProvider.regions["workshop"]["gpus"] == "none"


@pytest.mark.e2e
def test_a_workshop_hub_puts_students_in_their_group_under_its_policy(hub_factory):
    l4 = {"name": "NVIDIA L4", "memory_gib": 22.5, "uuid": "GPU-fake-0001"}
    hub = hub_factory('c.LocalProvider.nvml_module = "fakes.nvml"\n',
                      env={**fake_env(mig_gpu(0), l4), "PYTHONPATH": TESTS},
                      args=("--workshop", "students=30,gpu=mig"))
    log = hub.log_path.read_text(errors="replace")
    assert "workshop: group 'students' with 30 seats" in log and "idle servers stop after 30 minutes" in log
    assert "cloudhop-idle-culler" in log, "the culler runs"

    # a student logs in with the shared password and is in the group
    password = (hub.data_dir / "user_password").read_text().strip()
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30)
    r = s.post(f"{hub.url}/hub/login", data={"username": "ada", "password": password,
                                             "_xsrf": s.cookies.get("_xsrf")}, timeout=30, allow_redirects=False)
    assert r.status_code == 302, r.text[:300]
    assert hub.api("GET", "/users/ada").json()["groups"] == ["students"]

    token = hub.api("POST", "/users/ada/tokens", json={}).json()["token"]
    offers = hub.api("GET", "/cloudhop/offers/ada", token=token).json()["offers"]
    assert {o["gpu"] for o in offers} == {"none", "A100-80GB-MIG-1g.10gb"}, "the slices the workshop hands out"
    r = hub.api("POST", "/cloudhop/offers/ada/check", token=token,
                json={"provider": "local", "gpu": "L4", "gpu_count": 1})
    assert r.status_code == 403, r.text
    assert "'L4' is not allowed for group 'students'; allowed GPUs: none, *-MIG-*" in r.json()["message"]
    r = hub.api("POST", "/cloudhop/offers/ada/check", token=token,
                json={"provider": "local", "gpu": "A100-80GB-MIG-1g.10gb", "gpu_count": 1})
    assert r.status_code == 200, r.text

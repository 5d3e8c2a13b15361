"""Where a rescued spot server goes (spawner/rescue.py, with the real optimizer), and the
rescue API's checks of what the agent sends (bad input names the field)."""

from __future__ import annotations

import pytest
from tornado import web
from traitlets import TraitError

from cloudhop.extensions.notebook import rescued_note
from cloudhop.hub.rescue_api import check_body
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.optimizer import rank
from cloudhop.spawner.options import LaunchRequest
from cloudhop.spawner.rescue import CloudhopRescue, NoOffer, next_launch, relaunch_options

A = Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, price_hour=0.53, spot_price_hour=0.2, zones=("use1-az1",))
B = Offer("aws", "us-west-2", "g4dn.xlarge", "T4", 1, price_hour=0.55, spot_price_hour=0.25)
C = Offer("gcp", "us-central1", "n1-standard-4-t4", "T4", 1, price_hour=0.6, spot_price_hour=0.3)
ONLY_ON_DEMAND = Offer("oci", "us-ashburn-1", "VM.GPU.T4.1", "T4", 1, price_hour=0.4)
REQUEST = LaunchRequest(provider="aws", region="us-east-1", gpu="T4", gpu_count=1, spot=True)


class Server:
    """What next_launch reads of a spawner: its request, its offer, the user's offers
    and the failover plan (the real ranking)."""

    def __init__(self, offers, offer=A, request=REQUEST):
        self.request, self.offer, self.offers = request, offer, offers

    async def user_offers(self):
        return self.offers

    def plan(self, request, offers):
        return rank(request, offers)


async def test_the_next_spot_offer_of_the_failover_list_not_the_preempted_one():
    assert await next_launch(Server([A, B, C, ONLY_ON_DEMAND])) == (B, True)
    assert await next_launch(Server([A, C, ONLY_ON_DEMAND])) == (C, True)  # another cloud


async def test_no_other_spot_offer_falls_back_to_on_demand_as_the_setting_says():
    # the user's own choice first, on-demand now (on-demand, it is not taken back)
    assert await next_launch(Server([A, ONLY_ON_DEMAND]), "fallback") == (A, False)
    with pytest.raises(NoOffer, match="on_demand is 'never'"):
        await next_launch(Server([A, ONLY_ON_DEMAND]), "never")
    offer, spot = await next_launch(Server([A, B, C]), "always")
    assert spot is False and offer == A  # on-demand, the preempted place is not preempted


async def test_a_server_without_its_request_cannot_be_relaunched():
    with pytest.raises(NoOffer, match="request is unknown"):
        await next_launch(Server([A, B], request=None))


def test_relaunch_options_pin_the_offer_and_restore_the_snapshot():
    options = {"provider": "aws", "region": "us-east-1", "zone": "use1-az1", "gpu": "T4", "gpu_count": 1,
               "spot": True, "image": "example/img:1", "restore": "old"}
    assert relaunch_options(options, C, True, "snap") == {
        "provider": "gcp", "region": "us-central1", "instance_type": "n1-standard-4-t4", "gpu": "T4",
        "gpu_count": 1, "spot": True, "image": "example/img:1", "restore": "snap"}


def test_the_on_demand_setting_is_checked_by_name():
    assert CloudhopRescue().on_demand == "fallback"
    with pytest.raises(TraitError, match=r"c.CloudhopRescue.on_demand must be one of 'fallback', 'always', "
                                         r"'never', not 'sometimes'"):
        CloudhopRescue(on_demand="sometimes")


@pytest.mark.parametrize("body, field", [
    ([], "body"),
    ({"snapshot": "s", "spot": True}, "spot"),
    ({"snapshot": 7}, "snapshot"),
    ({"snapshot": "x" * 200}, "snapshot"),
    ({"notice": {"cloud": "aws"}}, "snapshot"),
    ({"snapshot": "s", "notice": "now"}, "notice"),
    ({"snapshot": "s", "notice_to_snapshot_s": -1}, "notice_to_snapshot_s"),
    ({"snapshot": "s", "bytes": True}, "bytes"),
])
def test_bad_rescue_bodies_are_400_naming_the_field(body, field):
    with pytest.raises(web.HTTPError) as err:
        check_body(body)
    assert err.value.status_code == 400 and err.value.log_message.startswith(field)


def test_a_good_body_is_kept_and_long_text_cut():
    out = check_body({"snapshot": "s1", "notice": {"cloud": "aws", "detail": "x" * 500}, "bytes": 10})
    assert out["snapshot"] == "s1" and len(out["notice"]["detail"]) == 200
    assert check_body({"error": "store down"})["error"] == "store down"


def test_the_panel_says_the_server_moved_after_a_spot_interruption():
    assert rescued_note({"rescued_from": None}) == ""
    note = rescued_note({"rescued_from": "aws/us-east-1/<g4dn>"})
    assert "moved after a spot interruption" in note and "&lt;g4dn&gt;" in note and "<g4dn>" not in note

"""Provider doubles for ``cloudhop catalog check``: they answer ``check_catalog`` from a
script instead of a cloud API, so the CLI's recording and the loader's use of it can be
tested. Plugged in by ``module:Class`` path, as ``CloudhopSpawner.providers`` allows."""

from __future__ import annotations

from cloudhop.spawner.providers.base import CredentialsError, Provider


class ScriptedAWS(Provider, partial=True):
    """An AWS account that can launch only g6 types, and p5.48xlarge in one zone."""

    name = "aws"
    display_name = "AWS (scripted)"
    asked: list = []

    async def check_catalog(self, offers):
        type(self).asked = list(offers)
        out = []
        for o in offers:
            if o.instance_type.startswith("g6."):
                out.append((o.instance_type, o.region, ()))
            elif o.instance_type == "p5.48xlarge" and o.region == "us-east-1":
                out.append((o.instance_type, o.region, ("use1-az6",)))
        # something the catalog never asked about must not be added
        out.append(("made-up.large", "us-east-1", ()))
        return out


class NoCredentialsAWS(Provider, partial=True):
    name = "aws"

    async def check_catalog(self, offers):
        raise CredentialsError("no AWS credentials found (looked for a profile and instance role)")


class ScriptedUncatalogued(Provider, partial=True):
    """A provider Cloudhop has no catalog table for."""

    name = "paperspace"

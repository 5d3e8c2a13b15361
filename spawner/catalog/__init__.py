"""The GPU offer catalog shipped with Cloudhop (``data/``, see its README for the source
and caveats), loaded once into :class:`~cloudhop.spawner.offers.Offer` objects.

    from cloudhop.spawner.catalog import catalog_offers
    catalog_offers("aws")                 # every AWS GPU offer, zones as tuples
    catalog_offers("gcp", config=cfg)     # with the hub's c.Catalog.* settings applied

GCP GPUs that attach to N1 hosts are offers named ``<host>+<gpu>x<count>``
(``n1-standard-8+T4x1``); see :mod:`.attached`.
"""

from .attached import DEFAULT_N1_HOSTS, attached_name, split_attached
from .catalog import (
    CATALOG_PROVIDERS,
    LIVE_PROVIDERS,
    Catalog,
    all_catalog_offers,
    catalog_offers,
    default_data_dir,
)
from .check import apply_check, check_path, read_check, record_check
from .loader import CatalogError, is_nvidia

__all__ = [
    "CATALOG_PROVIDERS", "LIVE_PROVIDERS", "DEFAULT_N1_HOSTS", "Catalog", "CatalogError",
    "all_catalog_offers", "apply_check", "attached_name", "catalog_offers", "check_path",
    "default_data_dir", "is_nvidia", "read_check", "record_check", "split_attached",
]

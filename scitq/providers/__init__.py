"""Providers: where scitq rents (or finds) hosts. One module per cloud, one interface.

    provider = get_provider("ovh", config)
    provider.flavors("GRA11")
"""
import importlib

from scitq.errors import BadRequest
from scitq.providers.base import TAG, Flavor, Instance, InstanceSpec, InstanceStatus, Provider, Quota

# name -> (module, class): imported only when asked for, so a missing SDK only hurts its own cloud
PROVIDERS = {
    "ovh": ("scitq.providers.ovh", "OVHProvider"),
    "azure": ("scitq.providers.azure", "AzureProvider"),
    "local": ("scitq.providers.local", "LocalProvider"),
    "static": ("scitq.providers.static", "StaticProvider"),
}


def get_provider(name, config=None):
    try:
        module, cls = PROVIDERS[name]
    except KeyError:
        raise BadRequest(f"unknown provider {name!r}: one of {', '.join(sorted(PROVIDERS))}") from None
    return getattr(importlib.import_module(module), cls)(config)


__all__ = ["TAG", "Flavor", "Instance", "InstanceSpec", "InstanceStatus", "Provider", "Quota",
           "PROVIDERS", "get_provider"]

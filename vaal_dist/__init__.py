"""vaal_dist: distributed active-learning selection on Ray.

    import vaal_dist
    picks = vaal_dist.select("data/pool", "data/labeled.parquet", budget=100, preset="cpu", epochs=2)

``select``, ``prepare``, ``export``, ``import_labels`` and ``experiment`` are the ``vaal-dist`` commands as
functions (vaal_dist/api.py, docs/api.md). They load on first use: importing vaal_dist starts no Ray, no torch.
"""
from vaal_dist.version import __version__

API = ("select", "prepare", "export", "import_labels", "experiment")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from vaal_dist import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaal_dist' has no attribute {name!r}")


def __dir__():
    return [*globals(), *API]

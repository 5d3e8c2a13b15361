"""The spawner side of Cloudhop: the spawner, offers, options and providers."""


def __getattr__(name):
    # Lazy, so `import cloudhop.spawner.options` does not import JupyterHub.
    if name == "CloudhopSpawner":
        from .spawner import CloudhopSpawner

        return CloudhopSpawner
    raise AttributeError(name)


__all__ = ["CloudhopSpawner"]

"""kiln.rpc: the device protocol, launchers, and the tracker/device gRPC services."""


# Device farm client API (kiln.rpc.client), loaded on first use so that `import kiln.rpc` stays light.
def __getattr__(name: str) -> object:
    if name in ("connect", "connect_device", "RemoteError"):
        from kiln.rpc import client

        return getattr(client, name)
    raise AttributeError(f"module 'kiln.rpc' has no attribute {name!r}")

"""kiln.rpc: the device farm, a tracker that leases devices by key and device servers that run packages.

One module per role (docs/topics/rpc.md has the picture):

- :mod:`kiln.rpc.common`: what both sides share: ``Capabilities``, tensors on the wire, message size limits;
- :mod:`kiln.rpc.state`, :mod:`kiln.rpc.tracker`: the tracker's records and storage, and its logic;
- :mod:`kiln.rpc.cache`, :mod:`kiln.rpc.device_service`: the device server's package cache, and its logic
  (runners on :class:`kiln.device.Session`);
- :mod:`kiln.rpc.servicers`: the thin gRPC servicers of both; :mod:`kiln.rpc.agent`: the device server's
  registration and heartbeat loop; :mod:`kiln.rpc.servers`: the gRPC server wiring;
- :mod:`kiln.rpc.client`, :mod:`kiln.rpc.auth`, :mod:`kiln.rpc.cli`: the client API, security, the commands.
"""


# Device farm client API (kiln.rpc.client), loaded on first use so that `import kiln.rpc` stays light.
def __getattr__(name: str) -> object:
    if name in ("connect", "connect_device", "RemoteError"):
        from kiln.rpc import client

        return getattr(client, name)
    raise AttributeError(f"module 'kiln.rpc' has no attribute {name!r}")

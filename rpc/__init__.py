"""kiln.rpc: the device protocol, launchers, and the tracker/device gRPC services."""

"""kiln.device: run a compiled model on a device and talk to it.

- :mod:`kiln.device.executable`: :class:`Executable`, the run / time / profile / close interface every way of
  running a model implements;
- :mod:`kiln.device.protocol`: the host side of the device protocol (frames over a byte stream to the C
  runtime's endpoint), :class:`Session`, the local Executable;
- :mod:`kiln.device.launchers`: start a package's runner on a device (``local``, ``qemu-user``) and hand back
  a Session;
- :mod:`kiln.device.ssh`: the ``ssh`` launcher, a Linux board reached over SSH (content-addressed uploads,
  checks of what the board can run, no runner outliving its session); imported on first use (paramiko);
- :mod:`kiln.device.qemu_system`: the ``qemu-system`` launcher, a board's firmware image on QEMU's emulation
  of the board; :mod:`kiln.device.serial`: the ``serial`` launcher, a flashed board over its UART (pyserial);
- :mod:`kiln.device.profile`: per-kernel profiles, tables and Chrome traces.

This layer knows runners and byte streams, not packages: :meth:`kiln.package.Package.open_session` extracts
a package and calls a launcher; the device farm (:mod:`kiln.rpc`) serves Sessions to remote clients.
"""

from kiln.device.executable import Executable
from kiln.device.launchers import Launcher, LauncherError, launcher_for, make_launcher
from kiln.device.profile import KernelCall, KernelStats, Profile
from kiln.device.protocol import (
    DeviceError,
    DeviceInfo,
    DeviceLost,
    DeviceTimeout,
    InputError,
    ProtocolError,
    Session,
    TensorSpec,
)

__all__ = [
    "DeviceError",
    "DeviceInfo",
    "DeviceLost",
    "DeviceTimeout",
    "Executable",
    "InputError",
    "KernelCall",
    "KernelStats",
    "Launcher",
    "LauncherError",
    "Profile",
    "ProtocolError",
    "Session",
    "TensorSpec",
    "launcher_for",
    "make_launcher",
]

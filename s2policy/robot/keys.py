"""CURVE keys for the remote robot: ``python -m s2policy.robot.keys dir=keys name=server``.

Writes ``<dir>/<name>.key`` (the public key: give it to the other side) and
``<dir>/<name>.key_secret`` (public + secret key, readable by its owner only: keep it where it
is). Make one pair for the robot's server and one per client machine, then:

- robot side: ``RobotServer(robot, address, server_secret_file="keys/server.key_secret",
  authorized_clients_dir="authorized/")`` with each client's ``<name>.key`` copied into
  ``authorized/`` (read when the server starts);
- client side: ``python -m s2policy.robot.run robot=remote address=tcp://<robot>:5555
  client_secret_file=keys/laptop.key_secret server_public_file=keys/server.key``.

Fields: :class:`RobotKeysConfig` (``configs/robot_keys.yaml``); console script
``s2policy-robot-keys``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RobotKeysConfig:
    #: Folder to write the key pair into (created if missing).
    dir: str = "???"
    #: Name of the pair: ``server``, or a client's name (letters, digits, ``-``, ``_``, ``.``).
    name: str = "???"
    #: Replace an existing pair of that name (its holders then lose access).
    overwrite: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name must be letters, digits, '-', '_' or '.', got {self.name!r}")


def make_keys(cfg: RobotKeysConfig) -> tuple[Path, Path]:
    """Write the pair; returns ``(public file, secret file)``."""
    import zmq.auth

    folder = Path(cfg.dir)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{cfg.name}.key", folder / f"{cfg.name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not cfg.overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass overwrite=true to replace them")
    for path in (public, secret):
        path.unlink(missing_ok=True)
    # the secret file is created owner-only before the key is written into it
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    written = zmq.auth.create_certificates(folder, cfg.name)
    os.chmod(secret, 0o600)
    return Path(written[0]), Path(written[1])


def _run(cfg: RobotKeysConfig) -> None:
    public, secret = make_keys(cfg)
    print(f"public key  {public}  (give it to the other side)")
    print(f"secret key  {secret}  (owner-only; keep it on this machine)")
    if cfg.name == "server":
        print(
            f"robot side: RobotServer(..., server_secret_file='{secret}', "
            "authorized_clients_dir=<folder of the clients' .key files>); clients: "
            f"server_public_file=<copy of {public.name}>"
        )
    else:
        print(
            f"copy {public} into the robot server's authorized clients folder (then restart "
            f"the server); here: client_secret_file={secret} server_public_file=<server.key>"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-robot-keys dir=... name=...`` (``argv``: in-process arguments)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("robot_keys", "robot_keys", _run, argv, schemas(robot_keys_schema=RobotKeysConfig))


if __name__ == "__main__":
    main()

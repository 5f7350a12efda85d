"""Fleet operations: signed, versioned configs, the drop directory, health-checked rollback.

What device twins, RAUC and hawkBit give a fleet engineer, for a config file::

    candidate (coldgate config apply | inbox drop) ──► gate: signature, version ──► apply
        ──► trial: health for [fleet] health_window_s ──► last good   (passed)
                                                       └► rolled back (failed: the last
                                                          good config returns by itself)

- :mod:`agent.fleet.trust`: the keyring of trusted fleet keys, detached Ed25519
  signatures (``coldgate.toml.sig``), key generation for the fleet side.
- :mod:`agent.fleet.version`: ``config_version`` and its order.
- :mod:`agent.fleet.gate`: one verdict on a candidate's bytes: signed by a trusted key,
  not a downgrade, not a file that rolled back before; its :class:`Provenance`
  (version, SHA-256, signer) is what status, events and every uplink batch report.
- :mod:`agent.fleet.keeper`: the state directory (last good, on trial, rolled back) and
  which config a starting agent runs.
- :mod:`agent.fleet.health`: the health check of a config on trial.
- :mod:`agent.fleet.inbox`: the drop directory.

The supervisor (:mod:`agent.daemon`) wires them; see docs/fleet.md.
"""

"""Payment HSM: the only place a clear PIN or key exists.

Modules: ``api`` (the async HSM interface and its values), ``local`` (in-process backend),
``client``/``server``/``wire``/``commands`` (networked HSM) with ``tls`` (mutual TLS),
``access`` (client profiles) and ``config`` (the server's TOML), ``keys`` (LMK and stored
keys), ``engine`` (the operations, sans I/O) with ``ratelimit`` (PIN verifications per card),
and the pure primitives ``crypto``, ``pinblock``, ``pinverify``, ``mac``, ``dukpt``, ``tr31``,
``emv``. See docs/hsm.md (EMV: docs/emv.md).
"""

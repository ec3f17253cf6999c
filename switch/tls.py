"""TLS for a listener: server certificate, and with a client CA, mutual TLS.

asyncio completes the handshake before the connection reaches the switch, so a terminal whose
certificate does not verify never reaches the codec.
"""

from __future__ import annotations

import ssl

from switch.settings import TlsSettings


def server_ssl_context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.client_ca_file is not None:
        context.load_verify_locations(settings.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context

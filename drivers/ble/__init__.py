"""BLE sensors: BTHome v2, Ruuvi RAWv2 and ATC1441/pvvx, over one bleak scanner.

``bthome``, ``ruuvi`` and ``atc`` are pure decoders (``bytes -> Decoded``) that import
nothing but the standard library and ``cryptography``; ``formats`` dispatches an
advertisement to them; ``scanner`` is the driver, ``radio`` starts bleak and translates
its errors, ``fake`` is an in-process radio behind bleak's backend seam, ``discover``
is what ``coldgate ble-scan`` runs. Only ``scanner``, ``radio``, ``fake`` and
``discover`` import bleak, and only when used.
"""

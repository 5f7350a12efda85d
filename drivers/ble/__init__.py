"""BLE sensors: BTHome v2, Ruuvi RAWv2, ATC1441/pvvx and Theengs Decoder's models, over bleak.

``bthome``, ``ruuvi`` and ``atc`` are pure decoders (``bytes -> Decoded``) that import
nothing but the standard library and ``cryptography``; ``theengs`` maps Theengs Decoder's
results (an optional extra) to the same ``Decoded``; ``formats`` dispatches an
advertisement to them. ``scanner`` is the driver (``options`` its config schema),
``replay`` its counter rule and the memory it persists, ``identity`` how it recognises a
sensor, ``radios`` its adapters and their recovery through ``adapter``'s BlueZ seam,
``radio`` starts bleak and translates its errors, ``fake`` is an in-process radio behind
bleak's backend seam (with a fake adapter control), ``discover`` is what
``coldgate ble-scan`` runs. Only ``radio``, ``fake`` and ``discover`` import bleak, and
only when used; ``adapter`` imports dbus-fast only when it talks to BlueZ.
"""

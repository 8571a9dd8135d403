"""The simulated agent CLIs' parts: Go formatting, ``cilium-health status``, a small cobra.

``sandbox.cilium_cli`` wires them into ``cilium``/``cilium-dbg`` and ``cilium-health``.
"""

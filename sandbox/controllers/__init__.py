"""The sandbox's controllers, one module per controller as kube-controller-manager is split.

Each is a mixin over the shared state (``base.SimCluster`` per cluster, the ``clock``) that
``sandbox.world.World`` wires together: ``kkp`` (KKP's application controller), ``helm_apply``,
``certgen``, ``agents`` (and kvstoremesh), ``workloads``, ``services``, ``faults``, ``clock``, and
``bootstrap`` (a fresh cluster).
"""

"""After day one: the changes a running mesh goes through, each planned before it is written.

A cluster leaves (``leave``), certificates are re-issued and handed to the peers (``renew``, with how each
tls method re-issues in ``reissue``), a CA is replaced with trust overlap (``ca_rotation`` with its plan in
``ca_plan`` and the chart's ``tls.caBundle`` in ``ca_bundle``), and values are made to survive a Cilium upgrade
(``upgrade_check`` lists what the target line refuses or ignores, ``upgrade_values`` writes values that work on
both lines). They build on the guide's steps (``clustermesh.steps``: the values write path, the endpoints, the
managed-peers record) and are used by the lifecycle flows and by the nightly's checks.
"""

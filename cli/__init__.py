"""The ``clustermesh`` command line: the composition root, the one package that knows flows, deployments
and the sandbox together."""

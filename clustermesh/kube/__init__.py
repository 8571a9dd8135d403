"""Talking to a cluster: the Kubernetes client adapter and the credentials that open it."""

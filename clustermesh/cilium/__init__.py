"""What Cilium is, per line, without a cluster: the version profiles and the parsers of its agents' output."""

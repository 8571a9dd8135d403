"""What Cilium agents see across the simulated clusters; ``sandbox.mesh`` is its public face."""

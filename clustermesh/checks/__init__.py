"""The nightly's checks of a running mesh: drift, certificates, reachability, as findings."""

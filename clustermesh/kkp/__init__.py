"""KKP's REST API: finding user clusters, fetching their kubeconfigs, creating missing ones."""

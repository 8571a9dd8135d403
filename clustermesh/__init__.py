"""clustermesh."""

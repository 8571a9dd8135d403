"""Telling people: the Slack adapter and the messages it posts."""

"""Provider tests against real sockets (scripted upstream)."""

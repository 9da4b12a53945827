"""Serving: the pyfunc bundle (model + index), packaging/registry, the authenticated server,
and the client shops call."""

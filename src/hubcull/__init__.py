"""hubcull: stop idle JupyterHub single-user servers, precisely and kindly."""

__version__ = "0.1.0"

"""mtcp-appliance: a static-site web server on the mtcp_core user-level TCP/IP stack.

``appliance.http`` and ``appliance.metrics`` are installed from the root-level ``http/`` and
``metrics/`` folders (see pyproject.toml).
"""

__version__ = "0.1.0"

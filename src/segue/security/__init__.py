"""The cluster's trust: its CA and certificates (``pki``, ``pem``), join tokens
(``tokens``), credential directories (``store``) and TLS contexts (``tls``). Errors:
``segue.security.errors``. Imports no controller, agent, HTTP or SQL code."""

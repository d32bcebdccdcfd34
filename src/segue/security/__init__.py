"""The cluster's trust: its CA and certificates (``pki``, ``pem``), join tokens
(``tokens``), credential directories (``store``) and TLS contexts (``tls``); the API's users:
API tokens (``apitokens``), roles and permissions as a pycasbin policy (``roles``,
``policy/``), who calls (``actors``) and what the audit log keeps of a body
(``redaction``). Errors: ``segue.security.errors``. Imports no controller, agent, HTTP or
SQL code."""

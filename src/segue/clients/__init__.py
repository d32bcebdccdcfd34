"""Clients of Segue's two services: one HTTP base (``base``), the host agent (``agent``) and
the controller (``controller``). Async; blocking callers (lab, tests, CLI) wrap them with
``base.Blocking`` instead of a second copy of every method."""

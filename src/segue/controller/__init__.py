"""The controller (``segue server``): inventory, migration jobs, the cluster's API.

Errors: everything raised is a ``segue.domain.errors.SegueError``; the HTTP status is mapped
only by ``segue.httpapi``.
"""

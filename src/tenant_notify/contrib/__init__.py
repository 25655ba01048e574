"""Integrations with host frameworks; each module needs its own extra.

* :mod:`tenant_notify.contrib.fastapi` (``pip install 'tenant-notify[fastapi]'``): a router
  with the test-email, task-status and delivery-event webhook endpoints.
* :mod:`tenant_notify.contrib.sqlalchemy` (``pip install 'tenant-notify[sqlalchemy]'``):
  send after the surrounding database transaction commits, nothing on rollback.

Nothing here is imported by ``import tenant_notify``.
"""

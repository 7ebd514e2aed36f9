"""The creditwatch web app (``creditwatch serve``): see :mod:`pipeline.web.app`."""

"""The AIPL dashboard: a page of charts and JSON endpoints over the archive."""

"""Message quotas per user and per organization, on the ``limits`` library's moving window."""

"""Forward passes, one module per architecture (``general.architecture``)."""

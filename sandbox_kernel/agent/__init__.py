"""The in-sandbox agent and how it is delivered (``bundle``)."""

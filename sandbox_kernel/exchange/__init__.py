"""Deliberate exchanges across the sandbox boundary: exposed ports, files in and out."""

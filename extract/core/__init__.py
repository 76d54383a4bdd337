"""Shared by every package of img-vmr: errors, the console, files, downloads, torch files, provenance, devices."""

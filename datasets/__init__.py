"""Readers and writers of medical and natural images (installed as ``idm_med.datasets``)."""

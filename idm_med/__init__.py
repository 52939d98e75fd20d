"""idm-med: Invertible Diffusion Models for compressed-sensing reconstruction.

The main entry points:

- :class:`idm_med.model.IDM` — the unrolled, invertible reconstruction network;
- :func:`idm_med.operators.make_operator` — forward operators by name;
- :mod:`idm_med.datasets` — fastMRI, DICOM, NIfTI and image input/output;
- :mod:`idm_med.reconstruction` — file-to-file pipelines used by the ``idm-med`` CLI.
"""

__version__ = "0.1.0"

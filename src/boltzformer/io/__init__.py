"""Reading and writing images, volumes and masks: the one place a file becomes an array and an array
becomes a file. ``load_image`` reads every supported format (PNG/JPEG/TIFF, NIfTI, NRRD/MHA, DICOM
series) into a :class:`MedicalImage`; ``write_mask`` writes a mask beside its source's geometry;
``atomic`` gives every writer a temporary name then a rename. Below the model: this package
imports numpy and the optional readers only."""

from boltzformer.io.errors import DataError
from boltzformer.io.formats import IMAGE_SUFFIXES
from boltzformer.io.images import read_image, read_mask
from boltzformer.io.medical import MAX_VOXELS, MedicalImage, load_image, read_label, write_mask
from boltzformer.io.windows import WINDOWS, to_uint8, volume_slices, window_for_prompt

__all__ = [
    "IMAGE_SUFFIXES",
    "DataError",
    "MAX_VOXELS",
    "MedicalImage",
    "WINDOWS",
    "load_image",
    "read_image",
    "read_label",
    "read_mask",
    "to_uint8",
    "volume_slices",
    "window_for_prompt",
    "write_mask",
]

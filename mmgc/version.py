"""mmgc's version and the versions of the stack it is tested with."""

from __future__ import annotations

__version__ = '0.2.0'

#: Tested ranges, ``name: (lowest, first untested)``, by import name (the
#: onedl-* forks install the same modules under other distribution names, so
#: versions are read from the modules). torch 2.1 is the newest torch with
#: prebuilt MMCV 2.1 wheels; mmcv 2.3 and mmdet 3.5 are the forks' releases.
SUPPORTED_VERSIONS: dict[str, tuple[str, str]] = {
    'torch': ('2.1.0', '2.14.0'),
    'mmengine': ('0.10.0', '0.11.0'),
    'mmcv': ('2.0.0rc4', '2.4.0'),
    'mmdet': ('3.3.0', '3.6.0'),
    # tested: MMSegmentation 1.2.2 and MMPretrain 1.2.0, each on the stack that
    # installs it (tools/setup_env.sh); the onedl forks' 1.3 and 1.4 are not tested
    'mmseg': ('1.2.0', '1.3.0'),
    'mmpretrain': ('1.2.0', '1.3.0'),
}


class UnsupportedVersionError(ImportError):
    """A package of the stack is outside the versions mmgc is tested with."""


def check_version(name: str, installed: str) -> None:
    """Raise unless ``installed`` lies in the tested range of ``name``.

    Args:
        name (str): A key of :data:`SUPPORTED_VERSIONS` (``'torch'``,
            ``'mmengine'``, ``'mmcv'``, ``'mmdet'``, ``'mmseg'``, ``'mmpretrain'``).
        installed (str): The module's ``__version__``.

    Raises:
        UnsupportedVersionError: Naming what is installed and what is
            supported.
    """
    from mmengine.utils import digit_version

    low, high = SUPPORTED_VERSIONS[name]
    if not digit_version(low) <= digit_version(installed) < digit_version(high):
        raise UnsupportedVersionError(
            f'mmgc {__version__} supports {name} >={low}, <{high}; {name} {installed} is installed.'
        )

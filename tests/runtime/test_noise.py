"""The log filters for optional packages' import noise: the known messages dropped, nothing else.

What can fail: a filter that swallows every torchao warning (a real one would be lost), or none (every command
would start with torchao's CUDA-extension warnings once the int8 extra is installed), or filters piling up.
"""

from __future__ import annotations

import logging

import imagebert  # noqa: F401 (installs the filters)
from imagebert.runtime.noise import install_log_filters


def test_only_the_known_import_noise_is_dropped(caplog):
    caplog.set_level(logging.WARNING)
    torchao = logging.getLogger("torchao")
    torchao.warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
    torchao.warning("a real torchao warning")
    logging.getLogger("torch.utils._pytree").warning(
        "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an opaque "
        "value type."
    )
    logging.getLogger("torch.utils._pytree").warning("something else")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real torchao warning", "something else"]


def test_installing_twice_adds_no_second_filter():
    install_log_filters()
    install_log_filters()
    assert len(logging.getLogger("torchao").filters) == 1

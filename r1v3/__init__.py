"""r1v3: a staged toolkit for the Skywork-R1V3 multimodal reasoning post-training recipe."""

__version__ = "0.1.0"

from r1v3.errors import UserError  # noqa: E402,F401

"""The procedural video data set of the video demo, :func:`vargen.video.bouncing_shapes`: the demo pipeline draws
its conditions from the same function."""
from ..video import bouncing_shapes

__all__ = ["bouncing_shapes"]

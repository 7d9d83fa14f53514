"""Video frames for the paper's video QA tasks: a fixed number of frames spread uniformly, decoded with PyAV."""

import io
import os

import PIL.Image


NUM_FRAMES = 4  # the paper's setting for MSVD-QA, MSRVTT-QA and iVQA


def uniform_frame_indices(total: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """The first frame of each of `num_frames` equal segments, as LAVIS's uniform sampling picks them; a video
    shorter than `num_frames` repeats frames."""
    if total < 1:
        raise ValueError("The video has no frames.")
    return [int(k * total / num_frames) for k in range(num_frames)]


def sample_frames(source, num_frames: int = NUM_FRAMES) -> list[PIL.Image.Image]:
    """Decode `num_frames` frames spread uniformly over a video given as a path or encoded bytes (needs `av`).

    Raises `ValueError` naming the source if it cannot be decoded.
    """
    try:
        import av
    except ImportError as error:
        raise ImportError("Video tasks decode their videos with PyAV: pip install 'hf_instructblip[eval]'.") from error
    name = source if isinstance(source, (str, os.PathLike)) else f"<{len(source)} bytes of video>"
    opened = source if isinstance(source, (str, os.PathLike)) else io.BytesIO(bytes(source))
    try:
        with av.open(opened) as container:
            stream = container.streams.video[0]
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            wanted = uniform_frame_indices(total, num_frames)
            container.seek(0)
            frames = {}
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    frames[index] = frame.to_image()
                if index >= wanted[-1]:
                    break
    except (av.error.FFmpegError, IndexError, ValueError) as error:
        raise ValueError(f"Video {name} could not be decoded: {error}") from error
    missing = [index for index in wanted if index not in frames]
    if missing:  # the container's header promised more frames than it holds
        raise ValueError(f"Video {name} announces {total} frames but frames {missing} could not be decoded.")
    return [frames[index] for index in wanted]


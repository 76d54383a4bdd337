"""Decoding: frames sampled by timestamp, resized and cropped on decode, and mono float audio, in bounded chunks.

Two frame decoders sit behind one interface (`iter_frames`):
- `ffmpeg`: one ffmpeg process per video, `fps,scale,crop` filters, raw RGB on a pipe. Fastest for
  dense sequential passes and flat in memory (benchmarks/bench_decode.py measures it).
- `decord`: random access by index through decord2, for sparse sampling; it seeks past the frames it does not
  need. It ignores rotation metadata, so rotated files always go through ffmpeg.

Which source frame becomes sample k is a rule of the sampling (`FrameSelection`):
- `shown_at`: the frame *shown* at t = k / fps (the last frame whose presentation time is <= t), so
  variable-frame-rate files are sampled correctly; ceil(end * fps) samples.
- `ffmpeg_fps_near`: what ffmpeg's `fps` filter gives at its defaults (VSLNet's frame extraction): each frame is
  moved to the nearest tick k / fps, i.e. sample k is the last frame that starts before (k + 1/2) / fps;
  round(end * fps) samples.
t = 0 is the start of the file's timeline (its earliest stream), for frames and audio samples alike, so the two
line up even when one stream starts later; a video that starts late repeats its first frame before it starts.

A decoder that sends nothing for STALL_TIMEOUT_S while we wait for it is stopped and the video fails; the time
a consumer holds a chunk does not count. Every read (and every finished decord call) is also reported to the
thread's engine (extract/watchdog.progress_reports), so a slow but steady decode is never taken for a stall.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Literal, TypeVar

import numpy as np

from extract.core.errors import VideoDecodeError
from extract.media.ffmpeg import ffmpeg_path, input_args
from extract.media.probe import StreamMetadata, ffmpeg_reason
from extract.media.watchdog import Watchdog, report_progress

DecoderName = Literal["ffmpeg", "decord"]
ResizeRule = Literal["shorter", "shorter_if_below", "none"]
FrameSelection = Literal["shown_at", "ffmpeg_fps_near"]

# A decoder that sends nothing for this long while we wait for it is stopped and the video fails.
STALL_TIMEOUT_S = 300.0
# bicubic: swscale inside ffmpeg, from the decoded picture to the output size in one pass.
# swscale_default: the same pass with no flags, what a plain `scale=W:H` filter does (HERO's SlowFast extraction).
# cv2_bilinear: cv2.resize(fx=fy=scale, INTER_LINEAR) on RGB frames, as VSLNet's scripts do: 2-tap bilinear
# without antialiasing, the source position of output pixel x being (x + 0.5) / scale - 0.5.
Interpolation = Literal["bicubic", "swscale_default", "cv2_bilinear"]
IN_DECODER = ("bicubic", "swscale_default")  # resized by the decoder itself, before the centre crop
# truncate: long side int(long * short_side / short), crop offsets floored (CLIPImageProcessor, torchvision, HERO).
# round: long side round(size * factor) as cv2.resize(fx=fy=factor) gives, crop offsets round((size - crop) / 2)
# half to even, as VSLNet's numpy code does.
Rounding = Literal["truncate", "round"]

# Bicubic with a = -0.5 (swscale's param1 is -a), PIL's kernel and so CLIPImageProcessor's: per-frame cosine
# to the HF processor path went from 0.9985 to 0.99999 on the real test video (tests/test_clip.py).
BICUBIC = "flags=bicubic+accurate_rnd+full_chroma_int:param0=0:param1=0.5"
# Frames leave ffmpeg at their own size for the cv2 resize; chroma is upsampled bilinearly, as libjpeg's
# "fancy upsampling" does for the JPEG frames VSLNet reads.
TO_RGB = "flags=bilinear+full_chroma_int"  # accurate_rnd here would triple the cost of a 720p frame


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a video: everything here changes the numbers and goes into provenance."""

    fps: float | None = 1.0  # None: the stream's native rate
    short_side: int = 224
    resize: ResizeRule = "shorter"  # shorter_if_below: only upscale when the short side < short_side
    crop: int = 224  # centre crop to crop x crop; 0 keeps the resized frame
    decoder: DecoderName = "ffmpeg"
    interpolation: Interpolation = "bicubic"
    rounding: Rounding = "truncate"
    selection: FrameSelection = "shown_at"
    chunk_frames: int = 32

    def scale(self, width: int, height: int) -> float | None:
        """The resize factor for a width x height frame, None when the frame keeps its size."""
        short = min(width, height)
        if self.resize == "none" or (self.resize == "shorter_if_below" and short >= self.short_side):
            return None
        return 1 + (self.short_side - short) / short  # VSLNet's expression, so cv2's sizes come out the same

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the frames this sampling yields for a displayed width x height video."""
        new_w, new_h = self.resized_size(width, height)
        if self.crop:
            if self.crop > min(new_w, new_h):
                raise VideoDecodeError(f"frame {new_w}x{new_h} is smaller than the {self.crop}-pixel crop")
            return self.crop, self.crop
        return new_w, new_h

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, before the centre crop."""
        factor = self.scale(width, height)
        if factor is None:
            return width, height
        short = min(width, height)
        if self.rounding == "round":
            new_w, new_h = round(width * factor), round(height * factor)
        else:  # from the ratio itself: width * factor can fall just below a whole number (720x576 -> 279, not 280)
            new_w, new_h = int(width * self.short_side / short), int(height * self.short_side / short)
        new_w = self.short_side if width == short else max(1, new_w)
        new_h = self.short_side if height == short else max(1, new_h)
        return new_w, new_h

    def crop_offsets(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the centre crop in a resized width x height frame."""
        if self.rounding == "round":
            return round((width - self.crop) / 2), round((height - self.crop) / 2)
        return (width - self.crop) // 2, (height - self.crop) // 2


@dataclass
class FrameBatch:
    """Consecutive sampled frames of one video with their presentation times (torchcodec's shape)."""

    data: np.ndarray  # [N, H, W, 3] uint8 RGB
    pts_seconds: np.ndarray  # [N] float64
    duration_seconds: np.ndarray  # [N] float64

    def __len__(self) -> int:
        return len(self.data)


# resampy's `kaiser_best` filter (64 zero crossings each side, rolloff 0.9476, Kaiser beta 14.77), which
# torchvggish and librosa < 0.10 (the PANNs release) resample with, in swresample's terms. swresample's default
# filter is 1e-2 away from it on a 48 kHz -> 16 kHz waveform (0.13 in VGGish log-mel); this one 3e-5 (6e-4).
KAISER_BEST = "filter_size=128:cutoff=0.9475937167399596:kaiser_beta=14.769656459379492:phase_shift=10"


@dataclass(frozen=True)
class AudioSampling:
    sample_rate: int = 16000
    # Mono is the plain mean of all channels, as torchvggish (`data.mean(axis=1)`) and librosa's to_mono (PANNs)
    # compute it. ffmpeg's own `-ac 1` gives 0.7071 * (L + R) for float output: +3 dB on every stereo source.
    downmix: Literal["channel_mean"] = "channel_mean"
    resampler: Literal["kaiser_best"] = "kaiser_best"
    chunk_seconds: float = 30.0


@dataclass
class AudioChunk:
    samples: np.ndarray  # [n] float32 mono in [-1, 1]
    start_seconds: float


# --- stall deadlines (the pipe's watchdog is extract/media/watchdog.py) ---------------------------------------------

T = TypeVar("T")


def call_with_deadline(call: Callable[[], T], timeout: float, what: str) -> T:
    """Run a blocking in-process decoder call (decord) and give up on it after `timeout` seconds.

    A native call cannot be interrupted; a stalled one is left behind in a daemon thread and the video fails. A
    call that returns reports progress to this thread's engine, as a pipe read does.
    """
    result: list[T] = []
    error: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="decode-call", daemon=True).start()
    if not done.wait(timeout):
        raise VideoDecodeError(f"{what}: decoder stalled for {timeout:.0f} s and was abandoned")
    if error:
        raise error[0]
    report_progress()
    return result[0]


def _read_exact(stream, size: int, watchdog: Watchdog) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Read `size` bytes (fewer at the end of the stream) into a fresh, writable uint8 array, touching the
    watchdog (and so reporting progress to this thread's engine) on every read that brings data."""
    buffer = np.empty(size, np.uint8)
    view, filled = memoryview(buffer), 0
    while filled < size:
        count = stream.readinto1(view[filled:])
        if not count:
            break
        watchdog.touch()
        filled += count
    view.release()
    return buffer[:filled]


def _widen_pipe(pipe: IO[bytes]) -> None:
    """Ask Linux for a 1 MiB pipe (64 KiB by default): a 720p RGB frame then takes 3 reads instead of 43."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass  # another OS, or a lowered /proc/sys/fs/pipe-max-size: the default pipe works, a little slower


def _pipe_chunks(cmd: list[str], chunk_bytes: int, what: str, source: str | None = None) -> Iterator[np.ndarray]:
    """Run ffmpeg and yield its stdout in uint8 blocks of chunk_bytes (the last may be shorter).

    Raises VideoDecodeError with ffmpeg's reason if it fails, or if it stalls while we wait for it.
    """
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file)
        watchdog = Watchdog(process, STALL_TIMEOUT_S)
        try:
            assert process.stdout is not None
            _widen_pipe(process.stdout)
            while True:
                block = _read_exact(process.stdout, chunk_bytes, watchdog)
                if len(block):
                    watchdog.pause()
                    yield block
                    watchdog.resume()
                if len(block) < chunk_bytes:
                    break
            returncode = process.wait()
        finally:
            watchdog.finish()
        if watchdog.fired:
            raise VideoDecodeError(f"{what}: decoder sent nothing for {STALL_TIMEOUT_S:.0f} s and was stopped")
        if returncode != 0:
            stderr_file.seek(0)
            stderr = stderr_file.read().decode(errors="replace")
            reason = ffmpeg_reason(stderr, source) if stderr.strip() else f"ffmpeg exit code {returncode}"
            raise VideoDecodeError(f"{what}: decoding failed ({reason})")


# --- which frames ---------------------------------------------------------------------------------------------


def frame_ticks(times: np.ndarray, fps: float, selection: FrameSelection) -> np.ndarray:
    """The first sample index k (of t = k / fps) at which a frame starting at each of `times` is taken.

    shown_at: ceil(t * fps); ffmpeg_fps_near: t * fps rounded to nearest, halves up (ffmpeg's AV_ROUND_NEAR_INF).
    The 1e-9 absorbs float error on exact ticks and halves, which ffmpeg computes in integers.
    """
    scaled = np.asarray(times, np.float64) * fps
    if selection == "shown_at":
        return np.ceil(scaled - 1e-9).astype(np.int64)
    return np.floor(scaled + 0.5 + 1e-9).astype(np.int64)


def sample_count(stream_end: float, fps: float, selection: FrameSelection = "shown_at") -> int:
    """How many samples a stream ending at `stream_end` gives: at least one, so a 1-frame video gives one row."""
    return max(1, int(frame_ticks(np.array([stream_end]), fps, selection)[0]))


def sample_times(
    frame_starts: np.ndarray, stream_end: float, fps: float, selection: FrameSelection = "shown_at"
) -> tuple[np.ndarray, np.ndarray]:
    """Sample times k / fps and, for each, the index of the source frame the selection rule takes."""
    samples = np.arange(sample_count(stream_end, fps, selection))
    indices = np.searchsorted(frame_ticks(frame_starts, fps, selection), samples, side="right") - 1
    return samples / fps, np.clip(indices, 0, len(frame_starts) - 1)


# --- resize and crop outside ffmpeg -----------------------------------------------------------------------------


def resize_like_cv2(frames: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, size[1], size[0], 3] as cv2.resize(frame, (0, 0), fx=scale, fy=scale) gives.

    Bilinear, no antialiasing, source coordinates (x + 0.5) / scale - 0.5 (from the factor, not from the sizes),
    clamped at the borders. torch's uint8 channels-last kernel rounds its fixed-point weights differently from
    cv2's: at most 1 grey level apart (tests/test_decode.py), 20x faster than the same resize in float32.
    """
    import torch

    pixels = torch.from_numpy(np.require(frames, requirements="W")).permute(0, 3, 1, 2)  # channels-last view
    resized = torch.ops.aten.upsample_bilinear2d(pixels, [size[1], size[0]], False, scale, scale)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def _centre_crop(frames: np.ndarray, sampling: FrameSampling) -> np.ndarray:
    if not sampling.crop:
        return frames
    left, top = sampling.crop_offsets(frames.shape[2], frames.shape[1])
    return np.ascontiguousarray(frames[:, top : top + sampling.crop, left : left + sampling.crop])


def _resize_and_crop(frames: np.ndarray, sampling: FrameSampling) -> np.ndarray:
    """The cv2 recipe's resize, then the centre crop, on frames that left the decoder at their own size."""
    height, width = frames.shape[1:3]
    factor = sampling.scale(width, height)
    if factor is not None:
        frames = resize_like_cv2(frames, sampling.resized_size(width, height), factor)
    return _centre_crop(frames, sampling)


# --- decoders ---------------------------------------------------------------------------------------------------


def _ffmpeg_frames(meta: StreamMetadata, sampling: FrameSampling, fps: float, threads: int) -> Iterator[FrameBatch]:
    in_ffmpeg = sampling.interpolation in IN_DECODER  # else frames leave ffmpeg unscaled, for the cv2 resize
    # shown_at: start_time=0 makes t = 0 the start of the file's timeline, shared with the audio (which aresample
    # pads the same way), round=up counts a frame from the first tick at or after its start. ffmpeg_fps_near is
    # VSLNet's `-filter:v fps=fps=24` with every option at its default.
    fps_options = ":start_time=0:round=up" if sampling.selection == "shown_at" else ""
    filters = [f"fps=fps={fps!r}{fps_options}"]
    if in_ffmpeg:
        width, height = sampling.resized_size(meta.width, meta.height)
        flags = f":{BICUBIC}" if sampling.interpolation == "bicubic" else ""
        filters.append(f"scale={width}:{height}{flags}")
        if sampling.crop:
            left, top = sampling.crop_offsets(width, height)
            filters.append(f"crop={sampling.crop}:{sampling.crop}:{left}:{top}")
        out_w, out_h = sampling.output_size(meta.width, meta.height)
    else:
        filters.append(f"scale={meta.width}:{meta.height}:{TO_RGB}")
        out_w, out_h = meta.width, meta.height
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-v", "error", "-threads", str(threads), *input_args(meta.path)]
    cmd += ["-map", "0:V:0", "-an", "-sn", "-dn", "-vf", ",".join(filters)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = out_w * out_h * 3
    # The fps filter repeats the last frame up to the next whole output tick at the end of the stream (round=up);
    # samples past the rule's count are not samples of the video, so they are dropped.
    wanted = sample_count(meta.stream_end, fps, sampling.selection)
    index = 0
    for block in _pipe_chunks(cmd, frame_bytes * sampling.chunk_frames, meta.path, meta.path):
        count = min(len(block) // frame_bytes, wanted - index)
        if count <= 0:
            continue
        data = block[: count * frame_bytes].reshape(count, out_h, out_w, 3)
        if not in_ffmpeg:
            data = _resize_and_crop(data, sampling)
        pts = (index + np.arange(count)) / fps
        index += count
        yield FrameBatch(data, pts, np.full(count, 1.0 / fps))


def _decord_frames(meta: StreamMetadata, sampling: FrameSampling, fps: float) -> Iterator[FrameBatch]:
    import decord  # imported lazily: it maps ~700 MB next to the CUDA torch wheels

    in_decord = sampling.interpolation in IN_DECODER
    width, height = sampling.resized_size(meta.width, meta.height) if in_decord else (meta.width, meta.height)
    what = f"{meta.path} (decord)"
    try:
        reader = call_with_deadline(
            lambda: decord.VideoReader(meta.path, ctx=decord.cpu(0), width=width, height=height, num_threads=1),
            STALL_TIMEOUT_S,
            what,
        )
        spans = call_with_deadline(lambda: reader.get_frame_timestamp(np.arange(len(reader))), STALL_TIMEOUT_S, what)
    except decord.DECORDError as error:
        raise VideoDecodeError(f"{meta.path}: decord could not open it ({str(error).splitlines()[0]})") from None
    if not (np.all(np.isfinite(spans)) and np.all(np.diff(spans[:, 0]) >= 0) and spans[-1, 1] < 1e7):
        raise VideoDecodeError(f"{meta.path}: decord cannot read this file's timestamps; use the ffmpeg decoder")
    if len(meta.frame_starts) == len(spans):
        starts = np.asarray(meta.frame_starts)  # exact; decord's are float32
    else:
        starts = spans[:, 0].astype(np.float64) - spans[0, 0] + meta.video_start  # decord's clock starts at frame 0
    targets, indices = sample_times(starts, meta.stream_end, fps, sampling.selection)
    for first in range(0, len(indices), sampling.chunk_frames):
        chunk = indices[first : first + sampling.chunk_frames].tolist()
        try:
            data = call_with_deadline(lambda chunk=chunk: reader.get_batch(chunk).asnumpy(), STALL_TIMEOUT_S, what)
        except decord.DECORDError as error:
            raise VideoDecodeError(f"{meta.path}: decoding failed ({str(error).splitlines()[0]})") from None
        data = _centre_crop(data, sampling) if in_decord else _resize_and_crop(data, sampling)
        yield FrameBatch(data, targets[first : first + len(chunk)], np.full(len(chunk), 1.0 / fps))


DECORD_CONTAINERS = ("mov,mp4",)  # where decord2's frame timestamps were checked (it loses them in mkv)


def frame_decoder_for(meta: StreamMetadata, sampling: FrameSampling) -> DecoderName:
    """The decoder that will actually run: decord only for unrotated mp4/mov files, ffmpeg for the rest."""
    if sampling.decoder == "decord" and not meta.rotation and meta.container.startswith(DECORD_CONTAINERS):
        return "decord"
    return "ffmpeg"


def iter_frames(meta: StreamMetadata, sampling: FrameSampling, threads: int = 0) -> Iterator[FrameBatch]:
    """Yield the sampled frames of one video in chunks of at most sampling.chunk_frames frames.

    threads: decoder threads for this video (0 = ffmpeg's choice). With several videos decoded at once, one
    or two threads each beat oversubscribing the cores (benchmarks/bench_extract.py).
    """
    fps = sampling.fps or meta.native_fps
    if fps <= 0:
        raise VideoDecodeError(f"{meta.path}: unknown frame rate; pass --fps")
    if frame_decoder_for(meta, sampling) == "decord":
        yield from _decord_frames(meta, sampling, fps)
    else:
        yield from _ffmpeg_frames(meta, sampling, fps, threads)


# --- audio ------------------------------------------------------------------------------------------------------


def downmix_filter(channels: int) -> str:
    """An ffmpeg `pan` filter that averages `channels` channels into one (an empty string for mono)."""
    if channels <= 1:
        return ""
    gain = repr(1.0 / channels)
    return "pan=mono|c0=" + "+".join(f"{gain}*c{i}" for i in range(channels))


def iter_audio(meta: StreamMetadata, sampling: AudioSampling) -> Iterator[AudioChunk]:
    """Yield the first audio stream as mono float32 at sampling.sample_rate, in chunks of chunk_seconds."""
    if not meta.has_audio:
        raise VideoDecodeError(f"{meta.path}: has no audio stream")
    if meta.audio_channels is None:
        raise VideoDecodeError(f"{meta.path}: audio channel layout unknown to ffmpeg; cannot average its channels")
    # Channels are averaged at the source rate, then resampled, in the reference's order (mean, then resampy).
    # first_pts=0 pads (or trims) the start so that sample 0 is t = 0 of the file's timeline, as frame 0 is.
    filters = [downmix_filter(meta.audio_channels), f"aresample=async=1:first_pts=0:{KAISER_BEST}"]
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-v", "error", *input_args(meta.path)]
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-af", ",".join(f for f in filters if f)]
    cmd += ["-ac", "1", "-ar", str(sampling.sample_rate)]
    cmd += ["-f", "f32le", "pipe:1"]
    chunk_samples = max(1, int(sampling.chunk_seconds * sampling.sample_rate))
    offset = 0
    for block in _pipe_chunks(cmd, chunk_samples * 4, f"{meta.path} (audio)", meta.path):
        samples = block[: len(block) // 4 * 4].view(np.float32)
        yield AudioChunk(samples, offset / sampling.sample_rate)
        offset += len(samples)

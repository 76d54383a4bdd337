"""Video files: finding them, probing their streams, decoding frames and audio with ffmpeg (or decord)."""

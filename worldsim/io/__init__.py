"""Writing files that readers can trust, shared by the data jobs, training, the commands and the
app: `files` (temporary name then rename, checksums) and `media` (PNG grids, mp4 and GIF videos);
and `progress`, which long jobs show on a terminal and in a log alike.
"""

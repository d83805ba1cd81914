"""The build folder: the names a build writes (layout), which files are ours (ownership, from records), the
staged swap that keeps a report beside exactly the files it describes (staging), reading an artifact only when it
is the one recorded (artifacts), atomic writes, sha256 digests and the disk budget."""

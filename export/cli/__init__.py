"""The command line every `python -m` command of roformer-trt shares: the entry path (parsing, logging, errors to
exit codes) in `entry`, and the flags several commands take, defined once, in `flags`."""

"""What a user hands us, read safely before any work: the files they name (`files`), ONNX graphs (`graph_file`),
every number they type (`numbers`) and the text they send (`text`, through the checkpoint's tokenizer). Every
refusal is one UsageError line (exit 2)."""

"""The report of a build: its typed schema, reading and writing it, its Markdown, the statistics each output
stores (compare), the thresholds that judge them, the one verdict, and the commands that reproduce a check with
NVIDIA's tools."""

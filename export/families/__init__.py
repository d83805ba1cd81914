"""Model families, one file each (roformer.py, modernbert.py): everything particular to a family lives in its
file; the rest of the toolchain reads the types of spec.py and family.py through the registry. How to add one:
export/families/README.md."""

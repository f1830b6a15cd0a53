"""SOLOv2 network, DiscoBox losses, CRF teacher and post-processing (docs/method.md §2-§4, §7)."""

# Nothing is imported here: config.py imports the leaf module crf/params.py, and importing
# build.py from this package's __init__ would close an import cycle through config.py.

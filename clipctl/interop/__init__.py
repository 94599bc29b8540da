"""Models out of clipctl: exports (open_clip, safetensors), the Python loader behind `clipctl.load`, embeddings and
zero-shot predictions on one's own images. It reads runs and checkpoints through `run/` and encodes through
`evaluate/`, so an exported or embedded model gives the numbers `clipctl eval` gives. Import the submodule you need;
`clipctl.interop.open_clip` is the shim that lets open_clip 3.3 build a DistilBERT text tower."""

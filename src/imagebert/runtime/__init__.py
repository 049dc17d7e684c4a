"""Shared runtime plumbing, written once: threads, distributed set-up, precision, atomic writes, image decoding,
the image backbone, progress output and train/eval mode switching. Every capability folder imports from here."""

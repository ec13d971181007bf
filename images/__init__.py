"""Offline builder of the demo images: PostgreSQL, backend, frontend and toolbox.

The images are assembled from the host's Debian binaries, so no registry is needed to build them.
``python -m images.build`` writes ``images/out/<name>.tar`` (OCI layout plus a docker-archive
``manifest.json`` over the same blobs).
"""

"""Named volumes: what the orchestrator needs (:mod:`.base`) and the host directories (:mod:`.host`)."""

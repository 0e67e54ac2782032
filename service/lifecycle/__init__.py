"""What changes what is served: the runtime holder and its swap (:mod:`.runtime`), rollout and
reload (:mod:`.rollout`), the record of the served bundle (:mod:`.serving`), warm-up, jobs and
their record (:mod:`.jobs`), the import job (:mod:`.imports`), and the offline tools: reindex,
bulk import, restore."""

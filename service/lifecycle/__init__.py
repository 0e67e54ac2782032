"""What changes what is served: the runtime holder and its swap (:mod:`.runtime`), a rollout
job (:mod:`.rollout`) and the app's rollouts (:mod:`.rollouts`), the record of the served bundle
(:mod:`.serving`), warm-up, jobs and their record (:mod:`.jobs`), the import job
(:mod:`.imports`), what a client may read of a failure (:mod:`.reasons`), and the offline
tools: reindex, bulk import, restore."""

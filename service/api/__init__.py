"""HTTP: the routes (one module per resource under :mod:`.routes`), their request and response
models (:mod:`.schemas`), auth and the runtime dependency (:mod:`.deps`), the middleware that
bounds every request and names it (:mod:`.middleware`, :mod:`.http_protocol`), and errors as
JSON (:mod:`.error_handlers`)."""
